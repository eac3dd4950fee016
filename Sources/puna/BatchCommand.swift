import CPuna
import PunaCore

/// `puna batch`: work through a JSONL file of prompts with continuous batching, resumable after a
/// crash, one shard of the file per process if asked.
enum BatchCommand {
    /// Adapters are per record here: named, and chosen by a record's "adapter" field. The canonical
    /// names differ from the shared --lora flags so that loading the model does not apply them to all.
    static let adapterFlags: [FlagSpec] = [
        FlagSpec(names: ["--adapter", "--lora"], value: "NAME=PATH",
                 help: "LoRA adapter (PEFT folder or GGUF LoRA) that records pick with \"adapter\": \"NAME\" (repeatable)", repeatable: true),
        FlagSpec(names: ["--adapter-scaled", "--lora-scaled"], value: "NAME=PATH:SCALE",
                 help: "the same with a user scale (repeatable)", repeatable: true),
    ]

    static let specs: [FlagSpec] = CommonFlags.loading.filter { spec in
        !AdapterFlags.specs.contains { $0.names[0] == spec.names[0] }
    } + adapterFlags + [
        FlagSpec(names: ["-i", "--in"], value: "FILE", help: "input JSONL, one request per line ('-' = stdin)"),
        FlagSpec(names: ["-o", "--out"], value: "FILE", help: "output JSONL; records already in it are skipped (resume)"),
        FlagSpec(names: ["-np", "--parallel"], value: "N", help: "sequences decoded together (default 4), each with a KV cache of -c positions (default here: at most 2048)"),
        FlagSpec(names: ["--shard"], value: "K/N", help: "only the records whose 0-based index mod N is K"),
    ] + CommonFlags.sampling.filter { $0.names[0] != "-s" } + [
        FlagSpec(names: ["-s", "--seed"], value: "S", help: "seed of records without one (default 0: reruns give the same text)"),
        FlagSpec(names: ["--progress-interval"], value: "SEC", help: "seconds between progress lines when stderr is not a terminal (default 5, 0 = none)"),
        helpFlag,
    ]

    static let summary = """
        Generate for every line of a JSONL file. A line holds "prompt" (or "instruction" and optional "input", \
        Alpaca style) and optionally "id", "system", "template", "max_tokens", "temperature", "top_k", "top_p", \
        "min_p", "repeat_penalty", "repeat_last_n", "seed", "stop" (list), "adapter"; the flags give the defaults. \
        Each finished record is appended to the output as {"id","text","finish_reason","tokens_in","tokens_out",\
        "adapter","ms"} (plus "error" when it failed; a line without "id" gets "id": null and "line": N) and \
        synced to disk, so a rerun after a crash skips what is done.
        """

    static func run(_ arguments: [String]) throws(PunaError) -> Int32 {
        let args = try ParsedArguments(command: "batch", arguments: arguments, specs: specs)
        if args.has("-h") {
            out(helpText(usage: "puna batch [-m MODEL] -i IN.jsonl -o OUT.jsonl [--parallel N] [--shard K/N] [options]",
                         summary: summary, specs: specs))
            return 0
        }
        guard args.positionals.isEmpty else { throw PunaError("'puna batch' takes no positional argument '\(args.positionals[0])'") }
        let inPath = try args.require("-i")
        let outPath = try args.require("-o")
        guard inPath != outPath else { throw PunaError("-i and -o name the same file; the input is never modified") }
        let parallel = try args.int("-np", range: 1...1024) ?? 4
        let shard = try parseShard(args.string("--shard"))
        let interval = try args.float("--progress-interval", range: 0...86400) ?? 5
        var defaults = try batchDefaults(args)

        let records = try BatchInput.read(path: inPath)
        let output = try BatchOutput(path: outPath)
        if output.repairedBytes > 0 {
            errLine("puna batch: \(outPath): removed an unfinished last line (\(output.repairedBytes) bytes) left by an interrupted run")
        }
        let mine = records.filter { $0.index % shard.count == shard.index }
        let pending = mine.filter { !output.doneKeys.contains($0.id.key) }
        let shardText = shard.count > 1 ? " (shard \(shard.index)/\(shard.count): \(mine.count) of \(records.count))" : ""
        if mine.count > pending.count {
            errLine("puna batch: resuming: \(mine.count - pending.count) of \(mine.count) records\(shardText) already in \(outPath)")
        }
        let foreign = output.doneKeys.count - (mine.count - pending.count)
        if foreign > 0 {
            errLine("puna batch: note: \(outPath) holds \(foreign) records whose ids are not among this run's records (another input or shard?)")
        }
        warnUnknownFields(records, source: inPath)
        guard !pending.isEmpty else {
            errLine("puna batch: nothing to do: all \(mine.count) records\(shardText) are in \(outPath)")
            return 0
        }

        // The KV caches (one per sequence) are checked by checkMemory once -c and --parallel are known.
        let (model, _) = try CommonFlags.loadModel(args, contextDecidedLater: true)
        // "auto" (no --template): the file's chat template. A template that does not parse is an
        // error then; with a built-in template chosen it only matters to records that ask for "auto".
        if defaults.template == nil { defaults.chatTemplate = try ChatTemplate(gguf: model.gguf) }
        else { defaults.chatTemplate = try? ChatTemplate(gguf: model.gguf) }
        let adapters = try loadAdapters(args, model: model)
        let adapterNames = adapters.map { $0.name }
        let board = try CommonFlags.boardProfile(args)
        let context = try args.int("-c", range: 1...(1 << 30)) ?? min(model.config.contextLength, board?.context ?? 2048)
        let cacheType = try checkMemory(args, model: model, context: context, parallel: parallel, board: board,
                                        adapters: adapters.map { $0.set })
        let scheduler = try BatchScheduler(model: model, parallel: parallel, contextLength: context, cacheType: cacheType)

        var progress = Progress(total: pending.count, interval: Double(interval))
        var byKey: [String: (request: BatchRequest, adapter: String?)] = [:]
        var next = 0
        let start = puna_now_ns()
        while true {
            // Refill free slots at once (continuous batching); bad records are answered on the spot.
            while scheduler.hasFreeSlot && next < pending.count {
                let request = pending[next]
                next += 1
                do throws(PunaError) {
                    var (job, adapter) = try request.prepare(defaults: defaults, tokenizer: model.tokenizer, adapters: adapterNames,
                                                               contextLength: context)
                    if let adapter, let entry = adapters.first(where: { $0.name == adapter }) { job.adapters = entry.set }
                    if let problem = scheduler.problem(with: job) { throw PunaError(problem) }
                    try scheduler.admit(job)
                    byKey[job.key] = (request, adapter)
                } catch {
                    try output.append(.failure(request.id, error.message, adapter: request.adapterName))
                    progress.recordDone(error: true, tokens: 0, scheduler: scheduler)
                }
            }
            if scheduler.isIdle { break }
            for done in try scheduler.step() {
                guard let entry = byKey.removeValue(forKey: done.key) else { continue }
                try output.append(BatchResult(id: entry.request.id, text: done.text,
                                              finishReason: BatchResult.reasonName(done.finishReason),
                                              tokensIn: done.promptTokens, tokensOut: done.generatedTokens,
                                              adapter: entry.adapter, milliseconds: Int(done.nanoseconds / 1_000_000)))
                progress.recordDone(error: false, tokens: done.generatedTokens, scheduler: scheduler)
            }
            progress.tick(scheduler: scheduler)
        }
        progress.finish(scheduler: scheduler)

        let seconds = Double(puna_now_ns() - start) / 1e9
        var line = "puna batch: \(progress.done) records\(shardText), \(progress.errors) errors"
        line += " | prompt \(scheduler.promptTokensEvaluated) tok, generated \(scheduler.tokensGenerated) tok in \(fixed(seconds, 1)) s"
        line += " | \(fixed(seconds > 0 ? Double(scheduler.tokensGenerated) / seconds : 0, 2)) tok/s generated overall"
        let decodeSeconds = Double(scheduler.decodeNanoseconds) / 1e9
        line += ", \(fixed(decodeSeconds > 0 ? Double(scheduler.decodeTokens) / decodeSeconds : 0, 2)) tok/s decode"
        line += " | parallel \(parallel), \(scheduler.steps) steps | peak RSS \(formatBytes(Int(puna_peak_rss_bytes())))"
        errLine(line)
        return 0
    }

    static func parseShard(_ text: String?) throws(PunaError) -> (index: Int, count: Int) {
        guard let text else { return (0, 1) }
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let k = Int(String(parts[0])), let n = Int(String(parts[1])), n >= 1, k >= 0, k < n else {
            throw PunaError("flag --shard: '\(text)' is not K/N with 0 ≤ K < N (e.g. 0/4)")
        }
        return (k, n)
    }

    static func batchDefaults(_ args: ParsedArguments) throws(PunaError) -> BatchDefaults {
        var d = BatchDefaults()
        if let name = args.string("--template") {
            if case .builtin(let t) = try PromptFormat.resolve(name, chatTemplate: nil, fallback: .raw, what: "flag --template"),
               name.lowercased() != "auto" {
                d.template = t
            }
        }
        d.system = args.string("--system")
        d.maxTokens = try args.int("-n", range: -1...(1 << 24)) ?? 128
        var sampler = try CommonFlags.samplerSettings(args)
        // A batch must give the same text when rerun after a crash, so no clock seed here.
        if !args.has("-s") { sampler.seed = 0 }
        d.sampler = sampler
        d.stopStrings = args.strings("--stop")
        d.stopAtEOS = !args.has("--ignore-eos")
        return d
    }

    /// The KV cache type, after refusing a `--parallel` × `-c` that does not fit the memory budget:
    /// the same budget as every other command (--mem, --board, the cgroup limit, physical memory;
    /// MemoryFlags) and the same estimate, with one KV cache per sequence and the loaded adapters.
    static func checkMemory(_ args: ParsedArguments, model: LanguageModel, context: Int, parallel: Int,
                            board: BoardProfile?, adapters: [AdapterSet] = []) throws(PunaError) -> GGMLType {
        let (_, key, value) = try MemoryFlags.cacheSettings(args, trainedContext: model.config.contextLength, board: board,
                                                            defaultContext: context, defaultType: nil)
        var settings = MemoryEstimate.Settings(context: context, keyType: key, valueType: value, batch: model.batchSize,
                                               threads: model.threads, sequences: parallel)
        model.applyBackend(to: &settings)   // --backend vulkan: each sequence's KV rows on the device
        var seen: [LoRAAdapter] = []
        for set in [model.activeAdapters] + adapters {
            for e in set.entries where !seen.contains(where: { $0 === e.adapter }) { seen.append(e.adapter) }
        }
        settings.adapters = seen.map { MemoryEstimate.AdapterFootprint($0) }
        let estimate = MemoryEstimate.llama(gguf: model.gguf, config: model.config, settings: settings)
        try MemoryFlags.check(estimate, settings: settings, budget: try MemoryFlags.budget(args, board: board),
                              stage: "before allocating \(parallel) KV cache\(parallel == 1 ? "" : "s") (--parallel \(parallel))") { t in
            MemoryEstimate.llama(gguf: model.gguf, config: model.config, settings: t)
        }
        return key
    }

    /// The --lora NAME=PATH and --lora-scaled NAME=PATH:SCALE adapters, loaded for `model`.
    static func loadAdapters(_ args: ParsedArguments, model: LanguageModel) throws(PunaError) -> [(name: String, set: AdapterSet)] {
        var requested: [(flag: String, name: String, path: String, scale: Float)] = []
        for item in args.strings("--adapter") {
            let (name, path) = try splitName(item, flag: "--lora", form: "NAME=PATH")
            requested.append(("--lora", name, path, 1))
        }
        for item in args.strings("--adapter-scaled") {
            let (name, rest) = try splitName(item, flag: "--lora-scaled", form: "NAME=PATH:SCALE")
            // The scale follows the last colon, so paths may contain colons.
            guard let colon = rest.lastIndex(of: ":"), let scale = parseDouble(String(rest[rest.index(after: colon)...])),
                  scale.isFinite, !rest[..<colon].isEmpty else {
                throw PunaError("flag --lora-scaled: '\(item)' is not NAME=PATH:SCALE")
            }
            requested.append(("--lora-scaled", name, String(rest[..<colon]), Float(scale)))
        }
        var loaded: [(name: String, set: AdapterSet)] = []
        for r in requested {
            guard !loaded.contains(where: { $0.name == r.name }) else { throw PunaError("flag \(r.flag): adapter name '\(r.name)' given twice") }
            let adapter = try LoRAAdapter.load(path: r.path, for: model)
            for w in adapter.warnings { errLine("puna: warning: \(r.path): \(w)") }
            loaded.append((r.name, AdapterSet([(adapter, r.scale)])))
        }
        return loaded
    }

    static func splitName(_ item: String, flag: String, form: String) throws(PunaError) -> (String, String) {
        guard let eq = item.firstIndex(of: "="), eq != item.startIndex, item.index(after: eq) != item.endIndex else {
            throw PunaError("flag \(flag): '\(item)' is not \(form) (records name the adapter with \"adapter\": \"NAME\")")
        }
        return (String(item[..<eq]), String(item[item.index(after: eq)...]))
    }

    /// One note per unknown field name (a typo like "max_token" would otherwise go unnoticed).
    static func warnUnknownFields(_ records: [BatchRequest], source: String) {
        var seen: [String] = []
        for r in records {
            for k in r.unknownFields where !seen.contains(k) {
                seen.append(k)
                errLine("puna batch: \(source): line \(r.line): ignoring field '\(k)' (not a request field)")
            }
        }
    }
}

/// Progress on stderr: a bar redrawn in place on a terminal, otherwise a plain line every few seconds.
struct Progress {
    let total: Int
    let interval: Double
    let isTTY: Bool
    let start: Int64
    var done = 0
    var errors = 0
    var tokens = 0
    var lastPrint: Int64
    var drewBar = false

    init(total: Int, interval: Double) {
        self.total = total
        self.interval = interval
        isTTY = puna_stderr_is_tty() != 0
        start = puna_now_ns()
        lastPrint = start
    }

    mutating func recordDone(error: Bool, tokens: Int, scheduler: BatchScheduler) {
        done += 1
        if error { errors += 1 }
        self.tokens += tokens
    }

    mutating func tick(scheduler: BatchScheduler) {
        let now = puna_now_ns()
        if isTTY {
            // Redraw at most ten times a second.
            guard now - lastPrint > 100_000_000 || done == total else { return }
            lastPrint = now
            drawBar(scheduler: scheduler, now: now)
        } else if interval > 0 && Double(now - lastPrint) / 1e9 >= interval {
            lastPrint = now
            errLine("puna batch: " + status(scheduler: scheduler, now: now))
        }
    }

    mutating func finish(scheduler: BatchScheduler) {
        guard isTTY else { return }
        drawBar(scheduler: scheduler, now: puna_now_ns())
        errRaw("\n")
    }

    func status(scheduler: BatchScheduler, now: Int64) -> String {
        let seconds = Double(now - start) / 1e9
        let rate = seconds > 0 ? Double(scheduler.tokensGenerated) / seconds : 0
        var s = "\(done)/\(total) records, \(errors) errors | \(fixed(rate, 1)) tok/s"
        if done > 0 && done < total {
            s += " | ETA " + duration(seconds / Double(done) * Double(total - done))
        }
        return s
    }

    mutating func drawBar(scheduler: BatchScheduler, now: Int64) {
        let width = 24
        let filled = total > 0 ? done * width / total : width
        let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
        errRaw("\r[\(bar)] " + status(scheduler: scheduler, now: now) + "   ")
        drewBar = true
    }

    func duration(_ s: Double) -> String {
        let total = Int(s.rounded())
        if total >= 3600 { return "\(total / 3600)h\(pad2((total % 3600) / 60))m" }
        if total >= 60 { return "\(total / 60)m\(pad2(total % 60))s" }
        return "\(total)s"
    }

    func pad2(_ n: Int) -> String { n < 10 ? "0\(n)" : "\(n)" }
}

func errRaw(_ s: String) {
    var s = s
    s.withUTF8 { puna_write_stderr(UnsafeRawPointer($0.baseAddress!).assumingMemoryBound(to: CChar.self), Int64($0.count)) }
}
