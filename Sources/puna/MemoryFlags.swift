import CPuna
import PunaCore

/// The memory budget of the commands that load a model: `--mem`, `--mlock`, the KV cache type
/// flags, and the check that refuses a run before loading when the estimate exceeds the budget.
enum MemoryFlags {
    static let mem = FlagSpec(names: ["--mem"], value: "SIZE",
                              help: "memory budget, e.g. 4.5G or 4500M (binary units): refuse, before loading, a run estimated to need more (default: the cgroup limit, else physical memory)")
    static let mlock = FlagSpec(names: ["--mlock"], value: nil, help: "lock the mapped weights in RAM (needs root or a large enough ulimit -l)")
    static let specs = [mem, mlock]

    /// Context and K/V cache types of a run: a flag wins, then what the command itself needs, then
    /// the --board profile, then the general default (the trained context, at most 4096; f16).
    static func cacheSettings(_ args: ParsedArguments, trainedContext: Int, board: BoardProfile?, defaultContext: Int?,
                              defaultType: String?) throws(PunaError) -> (context: Int, key: GGMLType, value: GGMLType) {
        let context = try args.int("-c", range: 1...(1 << 30)) ?? defaultContext ?? min(trainedContext, board?.context ?? 4096)
        let supported = KVCache.supportedTypes.map { $0.name }.joined(separator: ", ")
        let kName = args.string("-ctk") ?? defaultType ?? board?.cacheType.name ?? "f16"
        guard let key = GGMLType(name: kName) else { throw PunaError("flag --cache-type-k: unknown type '\(kName)' (use \(supported))") }
        guard KVCache.supportedTypes.contains(key) else {
            throw PunaError("flag --cache-type-k: \(kName) is not supported for the KV cache (use \(supported))")
        }
        guard let vName = args.string("-ctv") else { return (context, key, key) }
        guard let value = GGMLType(name: vName) else { throw PunaError("flag --cache-type-v: unknown type '\(vName)' (use \(supported))") }
        // The attention kernel reads K and V of one type.
        if value != key {
            throw PunaError("flag --cache-type-v: '\(vName)' differs from --cache-type-k ('\(kName)'); K and V must have one type (e.g. -ctk q8_0 -ctv q8_0)")
        }
        return (context, key, value)
    }

    /// The budget a run must fit in: the smallest of --mem, the --board profile's budget, the
    /// cgroup limit and physical memory; with words saying which one it is.
    static func budget(_ args: ParsedArguments, board: BoardProfile?) throws(PunaError) -> (bytes: Int, source: String) {
        let limit = Int(puna_cgroup_memory_limit())
        let physical = Int(puna_physical_memory_bytes())
        var best = (bytes: Int.max, source: "no known limit")
        func consider(_ bytes: Int, _ source: String) { if bytes > 0 && bytes < best.bytes { best = (bytes, source) } }
        if let text = args.string("--mem") {
            guard let bytes = MemoryEstimate.parseSize(text), bytes > 0 else {
                throw PunaError("flag --mem: '\(text)' is not a memory size (e.g. 4.5G, 4500M, 4718592K)")
            }
            consider(bytes, "--mem \(text)")
        }
        if let board { consider(board.memoryBudget(physical: physical, cgroupLimit: limit > 0 ? limit : nil), "the budget of board \(board.name)") }
        if limit > 0 { consider(limit, "the cgroup memory limit") }
        consider(physical, "physical memory")
        return best
    }

    /// Refuse a run whose estimate does not fit the budget: the breakdown, and what to change.
    /// `recompute` gives the estimate for other settings (for the advice).
    static func check(_ estimate: MemoryEstimate, settings: MemoryEstimate.Settings, budget: (bytes: Int, source: String),
                      stage: String, recompute: (MemoryEstimate.Settings) -> MemoryEstimate) throws(PunaError) {
        guard estimate.totalBytes > budget.bytes else { return }
        let run = settings.context > 0 ? "a run with -c \(settings.context)" : "a run"
        var s = "\(run) needs about \(formatBytes(estimate.totalBytes)) but the budget is \(formatBytes(budget.bytes)) (\(budget.source)); refusing \(stage).\n"
        s += breakdown(estimate)
        s += "\nto fit in \(formatBytes(budget.bytes)):"
        for line in MemoryEstimate.advice(settings: settings, budget: budget.bytes, cacheTypes: KVCache.supportedTypes, estimate: recompute) {
            s += "\n  " + line
        }
        throw PunaError(s)
    }

    /// The estimate as an aligned table with a total line.
    static func breakdown(_ estimate: MemoryEstimate) -> String {
        var rows: [(String, String)] = estimate.items.map { ("  " + $0.name, formatBytes($0.bytes)) }
        rows.append(("  total", "\(formatBytes(estimate.totalBytes)) (\(estimate.totalBytes) bytes)"))
        var text = table(rows)
        while text.hasSuffix("\n") { text.removeLast() }
        return text
    }

    /// Before the model is loaded (only its header parsed): estimate the run from the flags and
    /// refuse it if it does not fit. With `contextDecidedLater` (the command picks the context after
    /// loading, and -c is absent) the KV cache is left out here and checked by `makeCache`.
    static func checkBeforeLoading(_ args: ParsedArguments, gguf: GGUFFile, board: BoardProfile?, threads: Int, batch: Int,
                                   defaultContext: Int?, defaultType: String?, contextDecidedLater: Bool,
                                   logitRows: Int) throws(PunaError) {
        let config = try ModelConfig(gguf: gguf)
        var (context, key, value) = try cacheSettings(args, trainedContext: config.contextLength, board: board,
                                                     defaultContext: defaultContext, defaultType: defaultType)
        if contextDecidedLater && !args.has("-c") { context = 0 }
        var settings = MemoryEstimate.Settings(context: context, keyType: key, valueType: value, batch: batch,
                                               threads: threads > 0 ? threads : Int(puna_cpu_count()), logitRows: logitRows)
        for (path, _) in try AdapterFlags.requested(args) {
            settings.adapters.append(MemoryEstimate.AdapterFootprint(try LoRAAdapter.inspect(path: path)))
        }
        settings.mergeAdapters = args.has("--merge-lora") && !settings.adapters.isEmpty
        let budget = try budget(args, board: board)
        let estimate = MemoryEstimate.llama(gguf: gguf, config: config, settings: settings)
        try check(estimate, settings: settings, budget: budget, stage: "before loading \(gguf.path)") { t in
            MemoryEstimate.llama(gguf: gguf, config: config, settings: t)
        }
    }

    /// After loading: give back the mapped pages of tensors a merge replaced, then --mlock.
    static func afterLoading(_ args: ParsedArguments, model: LanguageModel) throws(PunaError) {
        if model.mergedWeightBytes > 0 { model.releaseReplacedWeights() }
        if args.has("--mlock") {
            do throws(PunaError) {
                for file in model.gguf.files { try file.lock() }
            } catch {
                throw PunaError("flag --mlock: \(error.message) (locking \(formatBytes(model.gguf.fileBytes)) needs root or ulimit -l of at least that)")
            }
        }
    }

    /// Before the KV cache is allocated, with the model loaded (its adapters active or merged).
    static func checkBeforeCache(_ args: ParsedArguments, model: LanguageModel, board: BoardProfile?, context: Int,
                                 key: GGMLType, value: GGMLType, logitRows: Int) throws(PunaError) {
        let estimate = model.memoryEstimate(context: context, keyType: key, valueType: value, logitRows: logitRows)
        var settings = MemoryEstimate.Settings(context: context, keyType: key, valueType: value, batch: model.batchSize,
                                               threads: model.threads, logitRows: logitRows)
        settings.adapters = model.activeAdapters.entries.map { MemoryEstimate.AdapterFootprint($0.adapter) }
        model.applyBackend(to: &settings)
        try check(estimate, settings: settings, budget: try budget(args, board: board), stage: "before allocating the KV cache") { t in
            MemoryEstimate.llama(gguf: model.gguf, config: model.config, settings: t)
        }
    }
}
