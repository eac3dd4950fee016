import CPuna
import PunaCore

enum RunCommand {
    static let specs: [FlagSpec] = CommonFlags.loading + [
        FlagSpec(names: ["-p", "--prompt"], value: "TEXT", help: "prompt"),
        FlagSpec(names: ["-f", "--file"], value: "FILE", help: "read the prompt from a file ('-' = stdin)"),
        FlagSpec(names: ["--input"], value: "TEXT", help: "Alpaca input field (with --template alpaca)"),
    ] + CommonFlags.sampling + [helpFlag]

    static func run(_ arguments: [String]) throws(PunaError) -> Int32 {
        let args = try ParsedArguments(command: "run", arguments: arguments, specs: specs)
        if args.has("-h") {
            out(helpText(usage: "puna run -m MODEL -p TEXT | -f FILE [options]",
                         summary: "Generate text from a prompt. The completion streams to stdout; a timing line goes to stderr.",
                         specs: specs))
            return 0
        }
        guard args.positionals.isEmpty else { throw PunaError("'puna run' takes no positional argument '\(args.positionals[0])' (use -p)") }
        guard args.has("-p") || args.has("-f") else { throw PunaError("'puna run' needs -p TEXT or -f FILE") }
        _ = try CommonFlags.generationOptions(args, template: try CommonFlags.template(args))  // flags checked before loading
        let (model, loadNs) = try CommonFlags.loadModel(args)
        let template = try CommonFlags.resolveTemplate(args, gguf: model.gguf)
        let options = try CommonFlags.generationOptions(args, template: template)
        let cache = try CommonFlags.makeCache(args, model: model)
        // The prompt is read after the model: a file longer than the context can hold is refused
        // before it is read whole, let alone tokenized.
        let tokenizer = model.tokenizer
        let prompt = try promptText(args, maxBytes: tokenizer.maxBytes(fitting: cache.capacity))!
        let text = try template.render(prompt: prompt, input: args.string("--input"), system: args.string("--system"))
        try tokenizer.checkCanFit(textBytes: text.utf8.count, context: cache.capacity, what: "the prompt")
        let tokens = template.tokens(text, tokenizer: tokenizer)
        let generator = try Generator(model: model, cache: cache, prompt: tokens, options: options)
        for step in generator { out(step.text) }
        outLine("")
        errLine(CommonFlags.timingLine(loadNanoseconds: loadNs, generator: generator)
                + " | stop: \(generator.finishReason?.rawValue ?? "?")")
        return 0
    }
}

enum LogitsCommand {
    static let specs: [FlagSpec] = CommonFlags.loading + [
        FlagSpec(names: ["--tokens"], value: "IDS", help: "comma-separated token ids, used as given (no BOS added)"),
        FlagSpec(names: ["-p", "--prompt"], value: "TEXT", help: "text to tokenize (BOS added when the vocab says so)"),
        FlagSpec(names: ["--json"], value: nil, help: "print {\"tokens\":[…],\"n_vocab\":V,\"logits\":[[…] per position]}"),
        // (-c defaults to the number of tokens and -ctk to f32 here)
        helpFlag,
    ]

    static func run(_ arguments: [String]) throws(PunaError) -> Int32 {
        let args = try ParsedArguments(command: "logits", arguments: arguments, specs: specs)
        if args.has("-h") {
            out(helpText(usage: "puna logits -m MODEL (--tokens 1,2,3 | -p TEXT) [--json]",
                         summary: "Print the logits of every input position (the conformance interface).", specs: specs))
            return 0
        }
        guard args.positionals.isEmpty else { throw PunaError("'puna logits' takes no positional argument '\(args.positionals[0])'") }
        if args.has("--tokens") == args.has("-p") { throw PunaError("'puna logits' needs exactly one of --tokens or -p") }
        let (model, _) = try CommonFlags.loadModel(args, defaultType: "f32", contextDecidedLater: true, defaultActivationLevels: 2)
        var tokens: [Int32]
        if let list = args.string("--tokens") {
            tokens = []
            for part in list.split(separator: ",", omittingEmptySubsequences: false) {
                let trimmed = part.filter { $0 != " " }
                guard let id = Int32(trimmed) else { throw PunaError("flag --tokens: '\(part)' is not a token id") }
                guard id >= 0 && Int(id) < model.config.vocabSize else {
                    throw PunaError("flag --tokens: token id \(id) is out of range (vocabulary has \(model.config.vocabSize) tokens)")
                }
                tokens.append(id)
            }
        } else {
            tokens = model.tokenizer.encode(args.string("-p")!, addBOS: model.tokenizer.addsBOS)
        }
        guard !tokens.isEmpty else { throw PunaError("no tokens to evaluate") }
        // This command exists to check numbers: an f32 cache just big enough, unless told otherwise.
        let cache = try CommonFlags.makeCache(args, model: model, defaultContext: tokens.count, defaultType: "f32", logitRows: tokens.count)
        let logits = try model.evaluate(tokens, cache: cache, allLogits: true)
        let vocab = model.config.vocabSize
        if args.has("--json") {
            var j = JSONWriter()
            j.beginObject()
            j.key("tokens"); j.beginArray(); for t in tokens { j.value(Int(t)) }; j.endArray()
            j.field("n_vocab", vocab)
            j.key("logits")
            j.beginArray()
            for i in 0..<tokens.count {
                j.beginArray()
                for v in 0..<vocab { j.value(logits[i * vocab + v]) }
                j.endArray()
            }
            j.endArray()
            j.endObject()
            outBytes(j.bytes + [0x0A])
        } else {
            for i in 0..<tokens.count {
                let row = Array(logits[(i * vocab)..<((i + 1) * vocab)])
                let top = (0..<vocab).sorted { row[$0] > row[$1] }.prefix(5)
                var line = "\(i)\t\(tokens[i])\ttop:"
                for t in top { line += " \(t)=\(fixed(Double(row[t]), 4))" }
                outLine(line)
            }
        }
        return 0
    }
}

enum TokenizeCommand {
    static let specs: [FlagSpec] = [
        CommonFlags.model,
        FlagSpec(names: ["--no-bos"], value: nil, help: "do not add BOS even when the vocab asks for it"),
        FlagSpec(names: ["--json"], value: nil, help: "print {\"tokens\":[…]}"),
        FlagSpec(names: ["-p", "--prompt"], value: "TEXT", help: "text (or give it after --)"),
        FlagSpec(names: ["-f", "--file"], value: "FILE", help: "read the text from a file ('-' = stdin; at most 256 MiB)"),
        FlagSpec(names: ["--parse-special"], value: nil, help: "text spelling a special token (e.g. <|im_start|>) becomes that token; by default it is plain text"),
        helpFlag,
    ]

    static let maxFileBytes = 256 << 20

    static func run(_ arguments: [String]) throws(PunaError) -> Int32 {
        let args = try ParsedArguments(command: "tokenize", arguments: arguments, specs: specs)
        if args.has("-h") {
            out(helpText(usage: "puna tokenize -m MODEL [--no-bos] [--parse-special] [--json] (-p TEXT | -f FILE | -- TEXT)",
                         summary: "Print the token ids of a text. Works on vocab-only GGUF files.", specs: specs))
            return 0
        }
        let path = try args.require("-m")
        let text: String
        let sources = (args.has("-p") ? 1 : 0) + (args.has("-f") ? 1 : 0) + (args.positionals.isEmpty ? 0 : 1)
        guard sources <= 1 else { throw PunaError("give the text once: with -p, -f or after --") }
        if let p = args.string("-p") {
            text = p
        } else if let file = args.string("-f") {
            text = try withInputBytes(file, maxBytes: maxFileBytes, limitNote: "the most text puna tokenize reads") {
                (bytes: UnsafeBufferPointer<UInt8>) throws(PunaError) -> String in String(decoding: bytes, as: UTF8.self)
            }
        } else {
            guard !args.positionals.isEmpty else { throw PunaError("'puna tokenize' needs a text (puna tokenize -m MODEL -- TEXT)") }
            text = args.positionals.joined(separator: " ")
        }
        let tokenizer = try Tokenizer(gguf: GGUFFile(path: path))
        let ids = tokenizer.encode(text, addBOS: tokenizer.addsBOS && !args.has("--no-bos"), parseSpecial: args.has("--parse-special"))
        if args.has("--json") {
            var j = JSONWriter()
            j.beginObject()
            j.key("tokens"); j.beginArray(); for t in ids { j.value(Int(t)) }; j.endArray()
            j.endObject()
            outLine(j.string)
        } else {
            for id in ids {
                var piece = JSONWriter()
                piece.appendQuoted(tokenizer.piece(id))
                outLine("\(id)\t\(piece.string)")
            }
        }
        return 0
    }
}
