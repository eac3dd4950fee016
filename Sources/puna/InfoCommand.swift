import CPuna
import PunaCore

enum InfoCommand {
    static let specs: [FlagSpec] = [
        FlagSpec(names: ["-m", "--model"], value: "FILE", help: "GGUF model (or vocab-only) file"),
        FlagSpec(names: ["-c", "--ctx", "--ctx-size"], value: "N", help: "context length for the memory estimate (default: min(file's, 4096))"),
        FlagSpec(names: ["--json"], value: nil, help: "print one JSON object"),
        FlagSpec(names: ["--lora"], value: "PATH", help: "describe a LoRA adapter instead (checked against -m when given; repeatable); with -m and any of -c -ctk -ctv -t -b --merge-lora: count it in the memory estimate", repeatable: true),
        FlagSpec(names: ["--merge-lora"], value: nil, help: "estimate with the adapters merged into the weights"),
        FlagSpec(names: ["-ctk", "--cache-type-k"], value: "TYPE", help: "KV cache type for the estimate (default f16)"),
        FlagSpec(names: ["-ctv", "--cache-type-v"], value: "TYPE", help: "KV cache type for values (must equal -ctk)"),
        FlagSpec(names: ["-t", "--threads"], value: "N", help: "threads for the estimate (default: one per CPU)"),
        FlagSpec(names: ["-b", "--batch-size"], value: "N", help: "prompt tokens per step for the estimate (default 256)"),
        helpFlag,
    ]

    static func run(_ arguments: [String]) throws(PunaError) -> Int32 {
        let args = try ParsedArguments(command: "info", arguments: arguments, specs: specs)
        if args.has("-h") {
            out(helpText(usage: "puna info -m FILE [--ctx N] [-ctk TYPE] [--lora PATH [--merge-lora]] [--json]",
                         summary: "Show a GGUF file's architecture, hyperparameters, tokenizer, tensor types and an estimate of the memory a run needs.",
                         specs: specs))
            return 0
        }
        guard args.positionals.isEmpty else { throw PunaError("'puna info' takes no positional argument '\(args.positionals[0])'") }
        let runFlags = ["-c", "-ctk", "-ctv", "-t", "-b", "--merge-lora"]
        if args.has("--lora") && !(args.has("-m") && runFlags.contains(where: { args.has($0) })) { return try AdapterInfo.run(args) }
        if args.has("--merge-lora") && !args.has("--lora") { throw PunaError("flag --merge-lora needs --lora") }
        let path = try args.require("-m")
        let gguf = try GGUFFile(path: path)
        let config: ModelConfig? = gguf.tensors.isEmpty ? (try? ModelConfig(gguf: gguf)) : try ModelConfig(gguf: gguf)
        let requestedContext = try args.int("-c", range: 1...(1 << 24))

        var typeCounts: [String: Int] = [:]
        for t in gguf.tensors {
            let name = t.type.isBitsAndBytes ? gguf.bitsAndBytes?.typeName ?? t.type.name : t.type.name
            typeCounts[name, default: 0] += 1
        }
        let typeNames = typeCounts.keys.sorted()
        let tokenizerModel = gguf.string("tokenizer.ggml.model")
        let vocabTokens = gguf["tokenizer.ggml.tokens"]?.arrayValue?.count
        let context = requestedContext ?? min(config?.contextLength ?? 4096, 4096)
        // The same estimate a run makes before loading (MemoryFlags.checkBeforeLoading).
        var estimate: MemoryEstimate? = nil
        if let config {
            let cache = try MemoryFlags.cacheSettings(args, trainedContext: config.contextLength, board: nil, defaultContext: context, defaultType: nil)
            var settings = MemoryEstimate.Settings(context: context, keyType: cache.key, valueType: cache.value,
                                                   batch: try args.int("-b", range: 1...65536) ?? 256,
                                                   threads: try args.int("-t", range: 1...1024) ?? Int(puna_cpu_count()))
            for path in args.strings("--lora") { settings.adapters.append(MemoryEstimate.AdapterFootprint(try LoRAAdapter.inspect(path: path))) }
            settings.mergeAdapters = args.has("--merge-lora")
            estimate = MemoryEstimate.llama(gguf: gguf, config: config, settings: settings)
        }

        if args.has("--json") {
            var j = JSONWriter()
            j.beginObject()
            j.field("file", path)
            j.field("file_bytes", gguf.fileBytes)
            j.field("gguf_version", Int(gguf.version))
            j.field("huggingface_folder", gguf.isHuggingFaceFolder)
            j.key("bitsandbytes"); if let b = gguf.bitsAndBytes { j.value(b.typeName) } else { j.null() }
            j.key("architecture"); if let a = gguf.architecture { j.value(a) } else { j.null() }
            j.field("vocab_only", gguf.tensors.isEmpty)
            if let c = config {
                j.field("n_layers", c.blockCount)
                j.field("n_heads", c.headCount)
                j.field("n_kv_heads", c.headCountKV)
                j.field("n_embd", c.embeddingLength)
                j.field("n_ff", c.feedForwardLength)
                j.field("n_vocab", c.vocabSize)
                j.field("n_ctx_train", c.contextLength)
                j.field("n_rot", c.ropeDimensionCount)
                j.field("rope_freq_base", c.ropeFreqBase)
                j.field("rms_norm_eps", c.rmsNormEpsilon)
                j.field("head_dim", c.headDimension)
                j.key("features")
                j.beginArray()
                for f in c.features(gguf: gguf) { j.value(f) }
                j.endArray()
            }
            j.key("tokenizer_model"); if let m = tokenizerModel { j.value(m) } else { j.null() }
            j.key("tokenizer_vocab_size"); if let n = vocabTokens { j.value(n) } else { j.null() }
            j.field("n_tensors", gguf.tensors.count)
            j.key("tensor_types")
            j.beginObject()
            for name in typeNames { j.field(name, typeCounts[name]!) }
            j.endObject()
            j.field("tensor_bytes", gguf.tensorBytes)
            j.field("context", context)
            if let e = estimate {
                j.field("estimated_bytes", e.totalBytes)
                j.key("estimate")
                j.beginObject()
                var keys: [String] = []  // one field per key (several adapters share one)
                for item in e.items where !keys.contains(item.key) { keys.append(item.key) }
                for key in keys { j.field(key, e.bytes(key)) }
                j.endObject()
            }
            j.endObject()
            outLine(j.string)
            return 0
        }

        var rows: [(String, String)] = [
            ("file", path),
            ("file size", "\(formatBytes(gguf.fileBytes)) (\(gguf.fileBytes) bytes)"),
            gguf.isHuggingFaceFolder
                ? ("format", "Hugging Face folder, \(gguf.files.count) safetensors file\(gguf.files.count == 1 ? "" : "s")"
                    + (gguf.bitsAndBytes.map { ", bitsandbytes \($0.scheme)\($0.doubleQuant ? " with double quantization" : "")" } ?? ""))
                : ("GGUF version", "\(gguf.version)"),
            ("architecture", gguf.architecture ?? "(none)"),
        ]
        if let c = config {
            rows += [
                ("layers", "\(c.blockCount)"),
                ("embedding", "\(c.embeddingLength)"),
                ("feed-forward", "\(c.feedForwardLength)"),
                ("heads", "\(c.headCount) (kv \(c.headCountKV), head size \(c.headDimension))"),
                ("rope", "\(c.ropeDimensionCount) dims, base \(c.ropeFreqBase)"),
                ("rms norm eps", "\(c.rmsNormEpsilon)"),
                ("context (trained)", "\(c.contextLength)"),
                ("vocab", "\(c.vocabSize)"),
            ]
            let features = c.features(gguf: gguf)
            if !features.isEmpty { rows.append(("layer", features.joined(separator: "; "))) }
        }
        rows.append(("tokenizer", "\(tokenizerModel ?? "(none)")\(vocabTokens.map { ", \($0) tokens" } ?? "")"))
        rows.append(("tensors", gguf.tensors.isEmpty ? "none (vocab-only file)" : "\(gguf.tensors.count), \(formatBytes(gguf.tensorBytes))"))
        for name in typeNames { rows.append(("  " + name, "\(typeCounts[name]!)")) }
        if let e = estimate {
            rows.append(("memory at ctx \(context)", formatBytes(e.totalBytes)))
            for item in e.items { rows.append(("  " + item.name, formatBytes(item.bytes))) }
        }
        out(table(rows))
        return 0
    }
}
