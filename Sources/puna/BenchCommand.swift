import CPuna
import PunaCore

/// `puna bench`: prompt-processing and decoding speed, measured the way llama.cpp's `llama-bench`
/// does so the two can be compared on the same file. Two separate tests, each from an empty cache:
/// "pp" evaluates `-p` tokens as one batch; "tg" evaluates `-n` tokens one at a time. Token ids
/// are BOS (when the vocab adds one) followed by pseudo-random ids from a fixed seed, so every
/// repetition and every run does the same work. One untimed warm-up of each test comes first
/// (it also faults the mapped weights into memory).
enum BenchCommand {
    static let backends = ["cpu", "vulkan"]

    static let specs: [FlagSpec] = [
        CommonFlags.model,
        FlagSpec(names: ["-p", "--n-prompt"], value: "N", help: "prompt tokens, evaluated as one batch (default 512, 0 = skip)"),
        FlagSpec(names: ["-n", "--n-gen"], value: "N", help: "tokens decoded one at a time (default 128, 0 = skip)"),
        CommonFlags.threads,
        FlagSpec(names: ["-r", "--repetitions"], value: "N", help: "timed repetitions of each test (default 5)"),
        FlagSpec(names: ["-b", "--batch-size"], value: "N", help: "prompt tokens per matrix step (default: -p, one batch)"),
        CommonFlags.cacheTypeK,
        CommonFlags.cacheTypeV,
        CommonFlags.activationLevels,
        FlagSpec(names: ["--backend"], value: "NAME", help: "compute backend: \(backends.joined(separator: ", ")) (default cpu)"),
        BackendFlags.specs[1], BackendFlags.specs[2],   // --device, --gpu-layers (with --backend vulkan)
        AdapterFlags.lora, AdapterFlags.loraScaled, AdapterFlags.mergeLoRA,
        FlagSpec(names: ["--lora-ab"], value: nil,
                 help: "with --lora: every decode repetition runs twice, without and with the adapters (order alternating), in this one process; prints both and the ratio"),
        FlagSpec(names: ["--bandwidth"], value: nil,
                 help: "before each decode repetition, read the weights a decode step reads once with the same threads and nothing else; prints that read rate, the decode roofline it gives and the fraction of it the decode reached"),
        FlagSpec(names: ["--seed"], value: "S", help: "seed of the token ids (default 42)"),
        FlagSpec(names: ["--no-warmup"], value: nil, help: "skip the untimed warm-up runs"),
        FlagSpec(names: ["--json"], value: nil, help: "print one JSON object instead of the table"),
        helpFlag,
    ]

    /// Timings of one test (pp or tg) over the repetitions.
    struct Result {
        let name: String        // "pp512", "tg128"
        let tokens: Int
        let samplesNs: [Int64]

        var tokensPerSecond: [Double] { samplesNs.map { Double(tokens) * 1e9 / Double(max($0, 1)) } }
        var median: Double { BenchCommand.median(tokensPerSecond) }
        var minimum: Double { tokensPerSecond.min() ?? 0 }
        var maximum: Double { tokensPerSecond.max() ?? 0 }
        var stddev: Double { BenchCommand.stddev(tokensPerSecond) }
    }

    static func run(_ arguments: [String]) throws(PunaError) -> Int32 {
        let args = try ParsedArguments(command: "bench", arguments: arguments, specs: specs)
        if args.has("-h") {
            out(helpText(usage: "puna bench -m MODEL [-p 512] [-n 128] [-t N] [-r 5] [--lora ADAPTER] [--backend cpu] [--json]",
                         summary: "Measure prompt (pp) and decode (tg) speed like llama-bench: each test starts from an empty cache, "
                             + "runs once untimed, then -r timed repetitions; prints the median tokens/s with min, max and standard deviation.",
                         specs: specs))
            return 0
        }
        guard args.positionals.isEmpty else { throw PunaError("'puna bench' takes no positional argument '\(args.positionals[0])'") }
        let path = try args.require("-m")
        let nPrompt = try args.int("-p", range: 0...(1 << 20)) ?? 512
        let nGen = try args.int("-n", range: 0...(1 << 20)) ?? 128
        guard nPrompt + nGen > 0 else { throw PunaError("nothing to measure: -p and -n are both 0") }
        let reps = try args.int("-r", range: 1...100_000) ?? 5
        let threads = try args.int("-t", range: 1...1024) ?? 0
        try CommonFlags.applyActivationLevels(args)
        let batch = try args.int("-b", range: 1...(1 << 20)) ?? max(nPrompt, 1)
        let backend = args.string("--backend") ?? "cpu"
        guard backends.contains(backend) else {
            throw PunaError("flag --backend: unknown backend '\(backend)' (available: \(backends.joined(separator: ", ")))")
        }
        var seed: UInt64 = 42
        if let s = args.string("--seed") {
            guard let v = UInt64(s) else { throw PunaError("flag --seed: '\(s)' is not a non-negative integer") }
            seed = v
        }
        let warmup = !args.has("--no-warmup")

        let loadStart = puna_now_ns()
        let model = try LanguageModel(path: path, options: ModelOptions(threads: threads, batchSize: batch))
        try AdapterFlags.apply(args, model: model)  // --lora / --lora-scaled, applied per token unless --merge-lora
        if backend == "vulkan" {
            // A benchmark must not quietly measure the CPU: no fallback here.
            try model.useVulkan(VulkanOptions(device: try args.int("--device", range: 0...255) ?? -1,
                                              gpuLayers: try args.int("--gpu-layers", range: 0...100_000) ?? -1, required: true))
            if let note = model.backendNote { errLine("puna: \(note)") }
        } else if args.has("--device") || args.has("--gpu-layers") {
            throw PunaError("flags --device and --gpu-layers need --backend vulkan")
        }
        let loadNs = puna_now_ns() - loadStart
        // Like llama-bench: a context that holds both tests' tokens.
        let cache = try CommonFlags.makeCache(args, model: model, defaultContext: nPrompt + nGen)

        var rng = SplitMix64(seed: seed)
        let vocab = model.config.vocabSize
        let bos: Int32? = model.tokenizer.addsBOS ? model.tokenizer.bosID : nil
        func tokens(_ n: Int) -> [Int32] {
            var t: [Int32] = []
            t.reserveCapacity(n)
            for i in 0..<n {
                if i == 0, let bos { t.append(bos) } else { t.append(Int32(truncatingIfNeeded: rng.next() % UInt64(vocab))) }
            }
            return t
        }

        func prompt() throws(PunaError) -> Int64 {
            cache.reset()
            let ids = tokens(nPrompt)
            let start = puna_now_ns()
            _ = try model.evaluate(ids, cache: cache)
            return puna_now_ns() - start
        }
        func decode(_ n: Int) throws(PunaError) -> Int64 {
            cache.reset()
            let ids = tokens(n)
            let start = puna_now_ns()
            for t in ids { _ = try model.evaluate([t], cache: cache) }
            return puna_now_ns() - start
        }

        var results: [Result] = []
        if nPrompt > 0 {
            if warmup { _ = try prompt() }
            var samples: [Int64] = []
            for _ in 0..<reps { samples.append(try prompt()) }
            results.append(Result(name: "pp\(nPrompt)", tokens: nPrompt, samplesNs: samples))
        }
        let adapters = model.activeAdapters
        let ab = args.has("--lora-ab")
        if ab && adapters.isEmpty { throw PunaError("flag --lora-ab needs --lora or --lora-scaled (without --merge-lora)") }
        let probe = args.has("--bandwidth")
        if probe && (ab || nGen == 0) { throw PunaError("flag --bandwidth needs -n > 0 and does not combine with --lora-ab") }
        var probeNs: [Int64] = []
        if nGen > 0 && ab {
            // A/B in one process: the same mapping, cache and machine state for both, and the order
            // alternates so a drift in the machine's load does not favour either.
            if warmup { _ = try decode(1) }
            var without: [Int64] = [], with: [Int64] = []
            for r in 0..<reps {
                for adapterFirst in r % 2 == 0 ? [false, true] : [true, false] {
                    model.activeAdapters = adapterFirst ? adapters : .none
                    if adapterFirst { with.append(try decode(nGen)) } else { without.append(try decode(nGen)) }
                }
            }
            model.activeAdapters = adapters
            results.append(Result(name: "tg\(nGen)", tokens: nGen, samplesNs: without))
            results.append(Result(name: "tg\(nGen)+lora", tokens: nGen, samplesNs: with))
        } else if nGen > 0 {
            if warmup { _ = try decode(1) }
            var samples: [Int64] = []
            for _ in 0..<reps {
                // Best of two reads, right before the decode it is compared with: the rate the
                // memory gives now, without the first pass's cache and TLB warm-up.
                if probe { probeNs.append(min(model.readDecodeWeights(), model.readDecodeWeights())) }
                samples.append(try decode(nGen))
            }
            results.append(Result(name: "tg\(nGen)", tokens: nGen, samplesNs: samples))
        }
        // Roofline: a decode step must read decodeBytes; at the probed rate that allows
        // rate / decodeBytes steps per second. Fractions pair each repetition with its own probe.
        let decodeBytes = probe ? model.decodeWeightBytes : 0
        let readGBps = probeNs.map { Double(decodeBytes) / Double(max($0, 1)) }
        var rooflineFractions: [Double] = []
        if let tg = results.first(where: { $0.name.hasPrefix("tg") }), probe {
            for (tps, gbps) in zip(tg.tokensPerSecond, readGBps) where gbps > 0 { rooflineFractions.append(tps * Double(decodeBytes) / (gbps * 1e9)) }
        }
        let pp = results.first { $0.name.hasPrefix("pp") }
        let tg = results.first { $0.name.hasPrefix("tg") }
        let tgLoRA = results.first { $0.name.hasPrefix("tg") && $0.name.hasSuffix("+lora") }
        // Per-repetition ratios (each pair ran back to back), and their median.
        var abRatios: [Double] = []
        if let tg, let tgLoRA {
            for (a, b) in zip(tg.tokensPerSecond, tgLoRA.tokensPerSecond) where a > 0 { abRatios.append(b / a) }
        }

        let gguf = model.gguf
        let parameters = gguf.tensors.reduce(0) { $0 + $1.elementCount }
        var typeCounts: [String: Int] = [:]
        for t in gguf.tensors { typeCounts[t.type.name, default: 0] += 1 }
        let peakRSS = Int(puna_peak_rss_bytes())

        if args.has("--json") {
            var j = JSONWriter()
            j.beginObject()
            j.field("model", path)
            j.field("model_bytes", gguf.fileBytes)
            j.field("tensor_bytes", gguf.tensorBytes)
            j.field("n_params", parameters)
            j.key("tensor_types"); j.beginObject(); for k in typeCounts.keys.sorted() { j.field(k, typeCounts[k]!) }; j.endObject()
            j.field("backend", backend)
            j.field("threads", model.threads)
            j.field("arch", String(cString: puna_cpu_arch()))
            j.key("cpu_features"); j.beginArray(); for f in cpuFeatureNames() { j.value(f) }; j.endArray()
            j.field("n_prompt", nPrompt)
            j.field("n_gen", nGen)
            j.field("batch_size", model.batchSize)
            j.field("cache_type", cache.type.name)
            j.field("context", cache.capacity)
            j.field("reps", reps)
            j.field("warmup", warmup)
            j.field("seed", Int(truncatingIfNeeded: seed))
            j.key("adapters"); j.beginArray(); for p in try AdapterFlags.requested(args) { j.value(p.path) }; j.endArray()
            j.field("merged_adapters", args.has("--merge-lora"))
            j.key("prompt_tokens_per_s"); if let pp { j.value(pp.median, decimals: 3) } else { j.null() }
            j.key("decode_tokens_per_s"); if let tg { j.value(tg.median, decimals: 3) } else { j.null() }
            j.key("prompt"); if let pp { write(pp, to: &j) } else { j.null() }
            j.key("decode"); if let tg { write(tg, to: &j) } else { j.null() }
            if let tgLoRA {
                j.key("decode_with_adapters"); write(tgLoRA, to: &j)
                j.key("decode_ratio_median"); j.value(median(abRatios), decimals: 4)
                j.key("decode_ratios"); j.beginArray(); for v in abRatios { j.value(v, decimals: 4) }; j.endArray()
            }
            if probe {
                j.field("decode_weight_bytes", decodeBytes)
                j.key("read_gbps_median"); j.value(median(readGBps), decimals: 3)
                j.key("read_gbps"); j.beginArray(); for v in readGBps { j.value(v, decimals: 3) }; j.endArray()
                j.key("roofline_tokens_per_s"); j.value(median(readGBps) * 1e9 / Double(max(decodeBytes, 1)), decimals: 3)
                j.key("roofline_fraction_median"); j.value(median(rooflineFractions), decimals: 4)
                j.key("roofline_fractions"); j.beginArray(); for v in rooflineFractions { j.value(v, decimals: 4) }; j.endArray()
            }
            j.field("load_ms", Int(loadNs / 1_000_000))
            j.field("kv_cache_bytes", cache.byteCount)
            j.field("peak_rss_bytes", peakRSS)
            j.endObject()
            outLine(j.string)
            return 0
        }

        var rows: [[String]] = [["model", "size", "params", "backend", "threads", "test", "t/s median", "min", "max", "stddev"]]
        for r in results {
            rows.append([basename(path), formatBytes(gguf.fileBytes), formatCount(parameters), backend, "\(model.threads)", r.name,
                         fixed(r.median, 2), fixed(r.minimum, 2), fixed(r.maximum, 2), fixed(r.stddev, 2)])
        }
        out(markdownTable(rows, rightAligned: [2, 4, 6, 7, 8, 9]))
        outLine("")
        if tgLoRA != nil {
            outLine("with/without adapters, per back-to-back pair: median \(fixed(median(abRatios), 3)) (\(abRatios.map { fixed($0, 3) }.joined(separator: ", ")))")
        }
        if probe {
            let gbps = median(readGBps)
            outLine("read probe: \(formatBytes(decodeBytes)) per decode step, read at \(fixed(gbps, 1)) GB/s (median; "
                    + "\(readGBps.map { fixed($0, 1) }.joined(separator: ", "))) = roofline \(fixed(gbps * 1e9 / Double(max(decodeBytes, 1)), 2)) tok/s; "
                    + "decode reached \(fixed(100 * median(rooflineFractions), 1)) % of it (median of per-repetition ratios)")
        }
        let adapterPaths = try AdapterFlags.requested(args).map { $0.path }
        if !adapterPaths.isEmpty {
            outLine("LoRA \(args.has("--merge-lora") ? "merged at load" : "unmerged (per token)"): \(adapterPaths.joined(separator: ", "))")
        }
        outLine("\(reps) repetitions\(warmup ? " after a warm-up" : ""); batch \(model.batchSize); KV cache \(cache.type.name), "
                + "\(cache.capacity) positions (\(formatBytes(cache.byteCount))); load \(fixed(Double(loadNs) / 1e6, 0)) ms; "
                + "peak RSS \(formatBytes(peakRSS)) (file \(formatBytes(gguf.fileBytes)))")
        return 0
    }

    static func write(_ r: Result, to j: inout JSONWriter) {
        j.beginObject()
        j.field("test", r.name)
        j.field("tokens", r.tokens)
        j.key("median_tokens_per_s"); j.value(r.median, decimals: 3)
        j.key("min_tokens_per_s"); j.value(r.minimum, decimals: 3)
        j.key("max_tokens_per_s"); j.value(r.maximum, decimals: 3)
        j.key("stddev_tokens_per_s"); j.value(r.stddev, decimals: 3)
        j.key("samples_ns"); j.beginArray(); for s in r.samplesNs { j.value(Int(s)) }; j.endArray()
        j.key("samples_tokens_per_s"); j.beginArray(); for v in r.tokensPerSecond { j.value(v, decimals: 3) }; j.endArray()
        j.endObject()
    }

    static func median(_ values: [Double]) -> Double {
        guard !values.isEmpty else { return 0 }
        let s = values.sorted()
        return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
    }

    /// Sample standard deviation (n - 1), as llama-bench reports it; 0 for a single sample.
    static func stddev(_ values: [Double]) -> Double {
        guard values.count > 1 else { return 0 }
        let mean = values.reduce(0, +) / Double(values.count)
        let squares = values.reduce(0) { $0 + ($1 - mean) * ($1 - mean) }
        return (squares / Double(values.count - 1)).squareRoot()
    }

    static func cpuFeatureNames() -> [String] {
        let bits = puna_cpu_features()
        let names: [(UInt32, String)] = [
            (PUNA_CPU_AVX2.rawValue, "avx2"), (PUNA_CPU_FMA.rawValue, "fma"), (PUNA_CPU_F16C.rawValue, "f16c"),
            (PUNA_CPU_AVX512F.rawValue, "avx512f"), (PUNA_CPU_AVX512BW.rawValue, "avx512bw"),
            (PUNA_CPU_AVX512VNNI.rawValue, "avx512vnni"), (PUNA_CPU_AVXVNNI.rawValue, "avxvnni"),
            (PUNA_CPU_AVX512BF16.rawValue, "avx512bf16"), (PUNA_CPU_AVX512VBMI.rawValue, "avx512vbmi"),
            (PUNA_CPU_NEON.rawValue, "neon"),
            (PUNA_CPU_DOTPROD.rawValue, "dotprod"), (PUNA_CPU_FP16.rawValue, "fp16"), (PUNA_CPU_I8MM.rawValue, "i8mm"),
            (PUNA_CPU_SVE.rawValue, "sve"),
        ]
        return names.filter { bits & $0.0 != 0 }.map { $0.1 }
    }

    static func basename(_ path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return path }
        return String(path[path.index(after: slash)...])
    }

    /// 6738415616 -> "6.74 B", 21631232 -> "21.63 M" (llama-bench's style).
    static func formatCount(_ n: Int) -> String {
        if n >= 1_000_000_000 { return fixed(Double(n) / 1e9, 2) + " B" }
        if n >= 1_000_000 { return fixed(Double(n) / 1e6, 2) + " M" }
        if n >= 1_000 { return fixed(Double(n) / 1e3, 2) + " K" }
        return "\(n)"
    }

    /// A Markdown table (the first row is the header), columns padded to line up.
    static func markdownTable(_ rows: [[String]], rightAligned: Set<Int>) -> String {
        guard let header = rows.first else { return "" }
        var widths = [Int](repeating: 3, count: header.count)
        for r in rows { for (i, c) in r.enumerated() { widths[i] = max(widths[i], c.count) } }
        func line(_ cells: [String]) -> String {
            var s = "|"
            for (i, c) in cells.enumerated() {
                let pad = String(repeating: " ", count: widths[i] - c.count)
                s += " " + (rightAligned.contains(i) ? pad + c : c + pad) + " |"
            }
            return s + "\n"
        }
        var s = line(header)
        s += line(widths.indices.map { i in
            rightAligned.contains(i) ? String(repeating: "-", count: widths[i] - 1) + ":" : String(repeating: "-", count: widths[i])
        })
        for r in rows.dropFirst() { s += line(r) }
        return s
    }
}

/// SplitMix64: a tiny, fixed PRNG, so the token ids of a benchmark are the same on every machine.
struct SplitMix64 {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
