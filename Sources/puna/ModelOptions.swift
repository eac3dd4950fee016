import CPuna
import PunaCore

/// Flags shared by the commands that load a model.
enum CommonFlags {
    static let model = FlagSpec(names: ["-m", "--model"], value: "FILE", help: "GGUF model file (run, chat, batch, perplexity: default the bundled demo, models/demo)")
    static let threads = FlagSpec(names: ["-t", "--threads"], value: "N", help: "threads (default: one per CPU)")
    static let context = FlagSpec(names: ["-c", "--ctx-size"], value: "N", help: "context length (default: the model's, at most 4096)")
    static let batch = FlagSpec(names: ["-b", "--batch-size"], value: "N", help: "prompt tokens per matrix step (default 256)")
    static let cacheTypeK = FlagSpec(names: ["-ctk", "--cache-type-k"], value: "TYPE",
                                     help: "KV cache type for keys: \(KVCache.supportedTypes.map { $0.name }.joined(separator: ", ")) (default f16)")
    static let cacheTypeV = FlagSpec(names: ["-ctv", "--cache-type-v"], value: "TYPE", help: "KV cache type for values: must equal -ctk")
    static let board = FlagSpec(names: ["--board"], value: "NAME|FILE",
                                help: "board profile, e.g. raspberry-pi-5 (see boards/): its -t, -c, -ctk defaults and memory budget")
    static let activationLevels = FlagSpec(names: ["--act-levels"], value: "1|2",
                                           help: "8-bit levels per activation in quantized matmuls: 1 (default, fastest, like llama.cpp) or 2 (~16-bit, for checking numbers)")
    static let loading = [model, threads, context, batch, cacheTypeK, cacheTypeV, board, activationLevels] + AdapterFlags.specs
        + BackendFlags.specs + MemoryFlags.specs

    /// --act-levels (kernels_internal.h): how quantized matmuls quantize their activations.
    static func applyActivationLevels(_ args: ParsedArguments, default fallback: Int = 0) throws(PunaError) {
        let levels = try args.int("--act-levels", range: 1...2) ?? fallback
        guard puna_kernels_set_activation_levels(Int32(levels)) == 0 else {
            throw PunaError("flag --act-levels: the kernels refused \(levels) levels")
        }
    }

    /// The --board profile, if one was named.
    static func boardProfile(_ args: ParsedArguments) throws(PunaError) -> BoardProfile? {
        guard let name = args.string("--board") else { return nil }
        return try BoardProfile.load(name)
    }

    static let sampling: [FlagSpec] = [
        FlagSpec(names: ["-n", "--n-predict"], value: "N", help: "tokens to generate (default 128, -1 = until EOS or full context)"),
        FlagSpec(names: ["--temp"], value: "T", help: "temperature (default 0.8; 0 = greedy)"),
        FlagSpec(names: ["--top-k"], value: "K", help: "top-k (default 40, 0 = off)"),
        FlagSpec(names: ["--top-p"], value: "P", help: "top-p (default 0.95, 1 = off)"),
        FlagSpec(names: ["--min-p"], value: "P", help: "min-p (default 0.05, 0 = off)"),
        FlagSpec(names: ["--repeat-penalty"], value: "R", help: "repetition penalty (default 1.1, 1 = off)"),
        FlagSpec(names: ["--repeat-last-n"], value: "N", help: "tokens the penalty looks back on (default 64, -1 = context)"),
        FlagSpec(names: ["-s", "--seed"], value: "S", help: "random seed (default: from the clock)"),
        FlagSpec(names: ["--stop"], value: "STR", help: "stop before this string (repeatable)", repeatable: true),
        FlagSpec(names: ["--template"], value: "NAME", help: "prompt template: \(PromptFormat.names.joined(separator: ", ")) (default auto: the model's tokenizer.chat_template when it has one, else raw)"),
        FlagSpec(names: ["--system"], value: "TEXT", help: "system text for the template"),
        FlagSpec(names: ["--ignore-eos"], value: nil, help: "keep generating past end-of-sequence"),
    ]

    /// Load the model of -m with its adapters, after checking that the run fits the memory budget
    /// (MemoryFlags). defaultContext/defaultType: the cache the command will ask makeCache for;
    /// contextDecidedLater: the command only knows its context after loading (checked then);
    /// logitRows: rows of logits one evaluation returns.
    static func loadModel(_ args: ParsedArguments, defaultContext: Int? = nil, defaultType: String? = nil,
                          contextDecidedLater: Bool = false, logitRows: Int = 1,
                          defaultActivationLevels: Int = 0) throws(PunaError) -> (LanguageModel, Int64) {
        let args = try DemoModel.resolve(args)  // run/chat/batch/perplexity without -m, and --lora demo: the bundled demo
        let path = try args.require("-m")
        let board = try boardProfile(args)
        if let board {
            let missing = board.missingFeatures(detected: puna_cpu_features(), arch: String(cString: puna_cpu_arch()))
            if !missing.isEmpty { errLine("puna: note: this CPU lacks \(missing.joined(separator: ", ")), which board \(board.name) has") }
        }
        let threads = try args.int("-t", range: 1...1024) ?? board?.threads ?? 0
        let batch = try args.int("-b", range: 1...65536) ?? 256
        try applyActivationLevels(args, default: defaultActivationLevels)
        let start = puna_now_ns()
        // Only the header is read here; the run is refused before the weights are touched.
        let gguf = try GGUFFile(path: path)
        try MemoryFlags.checkBeforeLoading(args, gguf: gguf, board: board, threads: threads, batch: batch, defaultContext: defaultContext,
                                           defaultType: defaultType, contextDecidedLater: contextDecidedLater, logitRows: logitRows)
        let model = try LanguageModel(gguf: gguf, options: ModelOptions(threads: threads, batchSize: batch))
        try AdapterFlags.apply(args, model: model)  // --lora / --lora-scaled / --merge-lora
        try BackendFlags.apply(args, model: model)  // --backend / --device / --gpu-layers (after adapters: uploads weights)
        try MemoryFlags.afterLoading(args, model: model)  // merged tensors' mapped pages released; --mlock
        return (model, puna_now_ns() - start)
    }

    static func makeCache(_ args: ParsedArguments, model: LanguageModel, defaultContext: Int? = nil,
                          defaultType: String? = nil, logitRows: Int = 1) throws(PunaError) -> KVCache {
        let board = try boardProfile(args)
        let (context, type, valueType) = try MemoryFlags.cacheSettings(args, trainedContext: model.config.contextLength, board: board,
                                                                       defaultContext: defaultContext, defaultType: defaultType)
        // Refuse a context the machine cannot hold before allocating it.
        try MemoryFlags.checkBeforeCache(args, model: model, board: board, context: context, key: type, value: valueType,
                                         logitRows: logitRows)
        return try model.makeCache(contextLength: context, type: type)
    }

    /// The cgroup limit when one is set, else the machine's physical memory; with a board profile,
    /// its budget (physical memory less the profile's reserve, within the cgroup limit).
    static func availableMemory(board: BoardProfile? = nil) -> Int {
        let limit = Int(puna_cgroup_memory_limit())
        let physical = Int(puna_physical_memory_bytes())
        if let board { return board.memoryBudget(physical: physical, cgroupLimit: limit > 0 ? limit : nil) }
        return limit > 0 ? min(limit, physical > 0 ? physical : limit) : physical
    }

    static func samplerSettings(_ args: ParsedArguments) throws(PunaError) -> SamplerSettings {
        var s = SamplerSettings()
        if let v = try args.float("--temp", range: 0...100) { s.temperature = v }
        if let v = try args.int("--top-k", range: 0...(1 << 24)) { s.topK = v }
        if let v = try args.float("--top-p", range: 0...1) { s.topP = v }
        if let v = try args.float("--min-p", range: 0...1) { s.minP = v }
        if let v = try args.float("--repeat-penalty", range: 0...100) { s.repeatPenalty = v }
        if let v = try args.int("--repeat-last-n", range: -1...(1 << 24)) { s.repeatLastN = v }
        if let seedText = args.string("-s") {
            guard let seed = UInt64(seedText) else { throw PunaError("flag --seed: '\(seedText)' is not a non-negative integer") }
            s.seed = seed
        } else {
            s.seed = UInt64(truncatingIfNeeded: puna_now_ns())
        }
        return s
    }

    /// The prompt format: --template NAME, or `auto` (the default): the file's chat template when
    /// it has one, else raw (guanaco for chat on the demo base, the format its adapter was trained on).
    /// Checks the name before the model is loaded; `resolveTemplate` picks the chat template after.
    static func template(_ args: ParsedArguments) throws(PunaError) -> PromptFormat {
        let fallback: PromptTemplate = args.command == "chat" && DemoModel.isDefault(for: args) ? .guanaco : .raw
        return try PromptFormat.resolve(args.string("--template"), chatTemplate: nil, fallback: fallback, what: "flag --template")
    }

    /// `template(args)` with the loaded file's chat template for `auto`.
    static func resolveTemplate(_ args: ParsedArguments, gguf: GGUFFile) throws(PunaError) -> PromptFormat {
        let name = args.string("--template")
        if let name, name.lowercased() != "auto" { return try template(args) }
        let fallback: PromptTemplate = args.command == "chat" && DemoModel.isDefault(for: args) ? .guanaco : .raw
        return try PromptFormat.resolve(nil, chatTemplate: try ChatTemplate(gguf: gguf), fallback: fallback, what: "flag --template")
    }

    static func generationOptions(_ args: ParsedArguments, template: PromptFormat) throws(PunaError) -> GenerationOptions {
        var g = GenerationOptions()
        g.maxTokens = try args.int("-n", range: -1...(1 << 24)) ?? 128
        g.sampler = try samplerSettings(args)
        g.stopStrings = args.strings("--stop") + template.stopStrings
        g.stopAtEOS = !args.has("--ignore-eos")
        return g
    }

    /// "load 12 ms | prompt 16 tok at 1234.5 tok/s | generated 32 tok at 456.7 tok/s | peak RSS 12.3 MiB"
    static func timingLine(loadNanoseconds: Int64, generator: Generator) -> String {
        "load \(fixed(Double(loadNanoseconds) / 1e6, 1)) ms | prompt \(generator.promptTokenCount) tok at \(fixed(generator.promptTokensPerSecond, 1)) tok/s"
            + " | generated \(generator.tokens.count) tok at \(fixed(generator.generationTokensPerSecond, 1)) tok/s"
            + " | peak RSS \(formatBytes(Int(puna_peak_rss_bytes())))"
    }
}

func fixed(_ d: Double, _ decimals: Int) -> String {
    var j = JSONWriter()
    j.value(d, decimals: decimals)
    return j.string
}

/// Text of -p, or of the file named by -f ("-" reads standard input). The file may hold at most
/// `maxBytes` (a prompt longer than the context can hold is refused before it is read whole).
func promptText(_ args: ParsedArguments, maxBytes: Int) throws(PunaError) -> String? {
    if let p = args.string("-p") {
        if args.has("-f") { throw PunaError("give either -p or -f, not both") }
        return p
    }
    guard let path = args.string("-f") else { return nil }
    return try withInputBytes(path, maxBytes: maxBytes, limitNote: "more text than the context can hold") {
        (bytes: UnsafeBufferPointer<UInt8>) throws(PunaError) -> String in String(decoding: bytes, as: UTF8.self)
    }
}
