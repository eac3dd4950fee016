import CPuna
import PunaCore

enum PerplexityCommand {
    static let specs: [FlagSpec] = CommonFlags.loading + [
        FlagSpec(names: ["-f", "--file"], value: "FILE", help: "text to score"),
        FlagSpec(names: ["--chunks"], value: "N", help: "score at most N chunks"),
        FlagSpec(names: ["--json"], value: nil, help: "print one JSON object"),
        helpFlag,
    ]

    /// Perplexity as llama.cpp's llama-perplexity computes it: the text is cut into chunks of -c
    /// tokens, each evaluated from an empty cache with BOS in its first position, and only the
    /// second half of each chunk is scored (so every scored token has at least c/2 of context).
    /// The largest text scored (wikitext-2's test set is 1.3 MB); it is tokenized a window at a time.
    static let maxTextBytes = 256 << 20

    static func run(_ arguments: [String]) throws(PunaError) -> Int32 {
        let args = try ParsedArguments(command: "perplexity", arguments: arguments, specs: specs)
        if args.has("-h") {
            out(helpText(usage: "puna perplexity [-m MODEL] -f TEXT [-c CTX]",
                         summary: "Perplexity of a text, chunked as llama.cpp's llama-perplexity.", specs: specs))
            return 0
        }
        let path = try args.require("-f")
        // Every chunk's logits come back at once: a context's worth of rows.
        let (model, _) = try CommonFlags.loadModel(args, logitRows: Int.max)
        let cache = try CommonFlags.makeCache(args, model: model, logitRows: Int.max)
        let n = cache.capacity
        guard n >= 8 else { throw PunaError("-c \(n) is too small for perplexity (at least 8)") }
        let tokens = try withInputBytes(path, maxBytes: maxTextBytes, limitNote: "the most text puna perplexity scores; cut the file") {
            (bytes: UnsafeBufferPointer<UInt8>) throws(PunaError) -> [Int32] in
            model.tokenizer.encodeLong(utf8: bytes, addBOS: model.tokenizer.addsBOS)
        }
        var chunks = tokens.count / n
        if let limit = try args.int("--chunks", range: 1...(1 << 30)) { chunks = min(chunks, limit) }
        guard chunks > 0 else {
            throw PunaError("\(path): \(tokens.count) tokens are fewer than one chunk of -c \(n) tokens")
        }
        let vocab = model.config.vocabSize
        let first = n / 2
        var nll = 0.0, nll2 = 0.0
        var count = 0
        let start = puna_now_ns()
        let json = args.has("--json")
        for chunk in 0..<chunks {
            var input = Array(tokens[(chunk * n)..<((chunk + 1) * n)])
            if model.tokenizer.addsBOS { input[0] = model.tokenizer.bosID }
            cache.reset()
            let logits = try model.evaluate(input, cache: cache, allLogits: true)
            for j in first..<(n - 1) {
                let lp = logits.withUnsafeBufferPointer {
                    puna_log_probability($0.baseAddress! + j * vocab, Int64(vocab), Int64(tokens[chunk * n + j + 1]))
                }
                nll -= lp
                nll2 += lp * lp
                count += 1
            }
            if !json { out("[\(chunk + 1)]\(fixed(puna_exp(nll / Double(count)), 4)),") }
        }
        let mean = nll / Double(count)
        let ppl = puna_exp(mean)
        // Standard error of the mean NLL, carried to the perplexity (as llama.cpp reports it).
        let variance = max(nll2 / Double(count) - mean * mean, 0)
        let error = count > 1 ? ppl * (variance / Double(count - 1)).squareRoot() : 0
        let seconds = Double(puna_now_ns() - start) / 1e9
        if json {
            var j = JSONWriter()
            j.beginObject()
            j.key("perplexity"); j.value(ppl, decimals: 6)
            j.key("error"); j.value(error, decimals: 6)
            j.field("chunks", chunks)
            j.field("ctx", n)
            j.field("scored_tokens", count)
            j.key("seconds"); j.value(seconds, decimals: 3)
            j.endObject()
            outLine(j.string)
        } else {
            outLine("")
            outLine("PPL = \(fixed(ppl, 4)) +/- \(fixed(error, 4)) (\(chunks) chunks of \(n), \(count) scored tokens, \(fixed(seconds, 2)) s)")
        }
        return 0
    }
}

enum ChatCommand {
    static let specs: [FlagSpec] = CommonFlags.loading + CommonFlags.sampling + [helpFlag]

    /// Interactive chat: one user turn per input line; the KV cache keeps the whole conversation, so
    /// each turn evaluates only its new tokens.
    static func run(_ arguments: [String]) throws(PunaError) -> Int32 {
        let args = try ParsedArguments(command: "chat", arguments: arguments, specs: specs)
        if args.has("-h") {
            out(helpText(usage: "puna chat -m MODEL --template NAME [options]",
                         summary: "Chat on the terminal (one line per turn; end with Ctrl-D). The conversation stays in the KV cache between turns.",
                         specs: specs))
            return 0
        }
        _ = try CommonFlags.generationOptions(args, template: try CommonFlags.template(args))  // flags checked before loading
        let (model, _) = try CommonFlags.loadModel(args)
        let format = try CommonFlags.resolveTemplate(args, gguf: model.gguf)
        var options = try CommonFlags.generationOptions(args, template: format)
        if !args.has("-n") { options.maxTokens = 512 }
        let cache = try CommonFlags.makeCache(args, model: model)
        let system = args.string("--system")
        if case .chat(let chatTemplate) = format {
            return try chatWithTemplate(chatTemplate, model: model, cache: cache, options: options, system: system)
        }
        guard case .builtin(let template) = format else { return 1 }
        let interactive = puna_stdout_is_tty() != 0
        var line = [CChar](repeating: 0, count: 1 << 16)
        var isFirst = true
        var endedWithEOS = false
        while true {
            if interactive { out("> ") }
            let n = line.withUnsafeMutableBufferPointer { puna_read_line($0.baseAddress, Int64($0.count)) }
            if n < 0 { break }
            let user = String(decoding: line[0..<Int(n)].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if user.isEmpty { continue }
            let turn = template.renderTurn(user: user, isFirst: isFirst, system: system)
            var tokens = model.tokenizer.encode(turn, addBOS: isFirst && model.tokenizer.addsBOS)
            // Templates whose replies end with EOS (Vicuna) get it back before the next turn.
            if endedWithEOS && template.endsReplyWithEOS { tokens.insert(model.tokenizer.eosID, at: 0) }
            isFirst = false
            let turnStart = cache.count
            let generator: Generator
            do throws(PunaError) {
                generator = try Generator(model: model, cache: cache, prompt: tokens, options: options)
            } catch {
                errLine("puna: \(error.message); conversation reset")
                cache.reset()
                isFirst = true
                continue
            }
            for step in generator { out(step.text) }
            outLine("")
            endedWithEOS = generator.finishReason == .eos
            if generator.finishReason == .contextFull {
                errLine("puna: context full; conversation reset")
                cache.reset()
                isFirst = true
            } else {
                // Keep the reply up to (not including) a stop string, so the next turn's text follows it.
                cache.truncate(to: turnStart + tokens.count + generator.keptTokenCount)
            }
        }
        return 0
    }

    /// Chat with the model file's chat template. Each turn renders the whole conversation (with the
    /// generation prompt) and evaluates only what is new: when the rendering extends the text the
    /// cache holds (earlier rendering plus the reply), just the new suffix is tokenized and fed.
    /// Templates that re-render earlier turns differently (e.g. dropping a previous reply's
    /// reasoning) do not extend it: then the whole rendering is tokenized, the cache is cut back to
    /// the longest common token prefix, and the rest is evaluated again.
    static func chatWithTemplate(_ template: ChatTemplate, model: LanguageModel, cache: KVCache, options: GenerationOptions,
                                 system: String?) throws(PunaError) -> Int32 {
        let tokenizer = model.tokenizer
        let interactive = puna_stdout_is_tty() != 0
        var line = [CChar](repeating: 0, count: 1 << 16)
        var messages: [ChatMessage] = system.map { [ChatMessage(role: "system", content: $0)] } ?? []
        var cachedText: String? = nil    // the text whose tokens the cache holds, when known exactly
        var cachedTokens: [Int32] = []   // the tokens the cache holds
        while true {
            if interactive { out("> ") }
            let n = line.withUnsafeMutableBufferPointer { puna_read_line($0.baseAddress, Int64($0.count)) }
            if n < 0 { break }
            let user = String(decoding: line[0..<Int(n)].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if user.isEmpty { continue }
            messages.append(ChatMessage(role: "user", content: user))
            let rendered: String
            do throws(PunaError) {
                rendered = try template.render(messages: messages, addGenerationPrompt: true)
            } catch {
                errLine("puna: \(error.message)")
                messages.removeLast()
                continue
            }
            var newTokens: [Int32]
            if let cachedText, cache.count == cachedTokens.count, !cachedTokens.isEmpty,
               rendered.utf8.count > cachedText.utf8.count, rendered.utf8.starts(with: cachedText.utf8) {
                let suffix = String(decoding: Array(rendered.utf8.dropFirst(cachedText.utf8.count)), as: UTF8.self)
                newTokens = tokenizer.encode(suffix, addBOS: false, parseSpecial: true)
            } else {
                let all = template.tokens(rendered, tokenizer: tokenizer)
                var common = 0
                let held = min(cachedTokens.count, cache.count)
                while common < held && common < all.count - 1 && all[common] == cachedTokens[common] { common += 1 }
                if held > 0 && common < held {
                    errLine("puna: note: the chat template renders earlier turns differently; re-evaluating from token \(common)")
                }
                cache.truncate(to: common)
                cachedTokens.removeSubrange(common...)
                newTokens = Array(all[common...])
            }
            let turnStart = cache.count
            let generator: Generator
            do throws(PunaError) {
                generator = try Generator(model: model, cache: cache, prompt: newTokens, options: options)
            } catch {
                errLine("puna: \(error.message); conversation reset")
                cache.reset()
                cachedTokens = []
                cachedText = nil
                messages = system.map { [ChatMessage(role: "system", content: $0)] } ?? []
                continue
            }
            var reply = ""
            for step in generator {
                out(step.text)
                reply += step.text
            }
            outLine("")
            if generator.finishReason == .contextFull {
                errLine("puna: context full; conversation reset")
                cache.reset()
                cachedTokens = []
                cachedText = nil
                messages = system.map { [ChatMessage(role: "system", content: $0)] } ?? []
                continue
            }
            messages.append(ChatMessage(role: "assistant", content: reply))
            // The cache holds the prompt and the reply's evaluated tokens (the last sampled token is
            // evaluated only when another follows; an end-of-generation token never is).
            let kept = max(0, min(cache.count - turnStart - newTokens.count, generator.tokens.count))
            cache.truncate(to: turnStart + newTokens.count + kept)
            cachedTokens += newTokens + generator.tokens.prefix(kept)
            cachedText = kept == generator.tokens.count ? rendered + reply : nil
        }
        return 0
    }
}
