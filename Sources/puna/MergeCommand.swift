import CPuna
import PunaCore

/// The LoRA flags of the commands that load a model (run, chat, logits, perplexity) and of merge.
enum AdapterFlags {
    static let lora = FlagSpec(names: ["--lora"], value: "PATH", help: "LoRA adapter: PEFT folder or GGUF LoRA (repeatable)", repeatable: true)
    static let loraScaled = FlagSpec(names: ["--lora-scaled"], value: "PATH:SCALE", help: "LoRA adapter with a user scale (repeatable)", repeatable: true)
    static let mergeLoRA = FlagSpec(names: ["--merge-lora"], value: nil, help: "fold the adapters into the weights at load (default: applied per token)")
    static let verbose = FlagSpec(names: ["--verbose"], value: nil, help: "adapter details and the merge's requantization error on stderr")
    static let specs = [lora, loraScaled, mergeLoRA, verbose]

    /// (path, scale) of every --lora (scale 1) and --lora-scaled PATH:SCALE.
    static func requested(_ args: ParsedArguments) throws(PunaError) -> [(path: String, scale: Float)] {
        var out: [(path: String, scale: Float)] = []
        for p in args.strings("--lora") {
            guard !p.isEmpty else { throw PunaError("flag --lora: empty path") }
            out.append((p, 1))
        }
        for item in args.strings("--lora-scaled") {
            // The scale follows the last colon, so paths may contain colons.
            guard let colon = item.lastIndex(of: ":") else {
                throw PunaError("flag --lora-scaled: '\(item)' is not PATH:SCALE")
            }
            let path = String(item[..<colon]), text = String(item[item.index(after: colon)...])
            guard !path.isEmpty else { throw PunaError("flag --lora-scaled: '\(item)' has no path before the colon") }
            guard let scale = parseDouble(text), scale.isFinite, scale.magnitude <= 1e6 else {
                throw PunaError("flag --lora-scaled: '\(text)' in '\(item)' is not a number")
            }
            out.append((path, Float(scale)))
        }
        return out
    }

    /// Load the requested adapters for `model`; warnings go to stderr.
    static func load(_ args: ParsedArguments, model: LanguageModel) throws(PunaError) -> AdapterSet {
        var set = AdapterSet()
        let verbose = args.has("--verbose")
        for (path, scale) in try requested(args) {
            let adapter = try LoRAAdapter.load(path: path, for: model)
            for w in adapter.warnings { errLine("puna: warning: \(path): \(w)") }
            if verbose {
                errLine("puna: adapter \(adapter.name): \(adapter.format == .peft ? "PEFT" : "GGUF"), rank \(adapter.rank), alpha \(fixed(Double(adapter.alpha), 3)), scale \(fixed(Double(adapter.baseScale), 4)) × \(fixed(Double(scale), 3)), \(adapter.targets.count) matrices, \(formatBytes(adapter.tensorBytes))")
            }
            set.entries.append((adapter, scale))
        }
        return set
    }

    /// Load the adapters and make them active, or merge them with --merge-lora.
    static func apply(_ args: ParsedArguments, model: LanguageModel) throws(PunaError) {
        let set = try load(args, model: model)
        if set.isEmpty {
            if args.has("--merge-lora") { throw PunaError("flag --merge-lora needs --lora or --lora-scaled") }
            return
        }
        if args.has("--merge-lora") {
            let report = try model.mergeAdapters(set)
            if report.bitsAndBytesCopies > 0 {
                // The quantized base stays mapped for the other matrices; these copies are new memory.
                errLine("puna: --merge-lora: \(report.bitsAndBytesCopies) bitsandbytes matrices merged into F16 copies (\(formatBytes(report.bitsAndBytesCopyBytes)) of memory; without --merge-lora the adapter is applied per token at no copy)")
            }
            if args.has("--verbose") { for line in reportLines(report) { errLine("puna: " + line) } }
        } else {
            model.activeAdapters = set
        }
    }

    /// "merged 14 q4_0 tensors (229376 weights): RMS update 0.0123, RMS requantization error 0.0045 (36% of the update)"
    static func reportLines(_ report: MergeReport) -> [String] {
        var lines: [String] = []
        for e in report.entries {
            var s = "merged \(e.tensors) \(e.type.name) tensor\(e.tensors == 1 ? "" : "s") (\(e.weights) weights): RMS weight \(sci(e.rmsWeight)), RMS update \(sci(e.rmsUpdate)), RMS \(e.type.isQuantized ? "requantization" : "rounding") error \(sci(e.rmsError))"
            if e.rmsUpdate > 0 { s += " (\(fixed(100 * e.rmsError / e.rmsUpdate, 1))% of the update)" }
            lines.append(s)
        }
        return lines
    }

    /// Three significant digits in scientific notation, e.g. "1.23e-04".
    static func sci(_ v: Double) -> String {
        guard v != 0, v.isFinite else { return v == 0 ? "0" : fixed(v, 3) }
        var m = v.magnitude, e = 0
        while m >= 10 { m /= 10; e += 1 }
        while m < 1 { m *= 10; e -= 1 }
        if m >= 9.995 { m /= 10; e += 1 }
        let exponent = (e < 0 ? "-" : "+") + (e.magnitude < 10 ? "0" : "") + "\(e.magnitude)"
        return (v < 0 ? "-" : "") + fixed(m, 2) + "e" + exponent
    }
}

enum MergeCommand {
    static let specs: [FlagSpec] = [
        CommonFlags.model,
        AdapterFlags.lora,
        AdapterFlags.loraScaled,
        FlagSpec(names: ["-o", "--output"], value: "FILE", help: "the merged GGUF to write"),
        FlagSpec(names: ["--type"], value: "TYPE", help: "same (default: keep each tensor's type), f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k"),
        CommonFlags.threads,
        AdapterFlags.verbose,
        helpFlag,
    ]

    static func run(_ arguments: [String]) throws(PunaError) -> Int32 {
        let args = try ParsedArguments(command: "merge", arguments: arguments, specs: specs)
        if args.has("-h") {
            out(helpText(usage: "puna merge -m BASE --lora A [--lora-scaled B:S]... -o OUT.gguf [--type same|f16|q8_0|q4_0|q4_k]",
                         summary: "Write a GGUF with LoRA adapters folded into the weights (W + s·B·A per adapter). Only the matrices the adapters change are re-encoded, unless --type converts every matrix.",
                         specs: specs))
            return 0
        }
        guard args.positionals.isEmpty else { throw PunaError("'puna merge' takes no positional argument '\(args.positionals[0])'") }
        let output = try args.require("-o")
        var type: GGMLType? = nil
        if let name = args.string("--type"), name.lowercased() != "same" {
            guard let t = GGMLType(name: name), t.canEncode, t.canDecode else {
                throw PunaError("flag --type: unknown or unsupported type '\(name)' (same, f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k)")
            }
            type = t
        }
        if try AdapterFlags.requested(args).isEmpty { throw PunaError("'puna merge' needs --lora or --lora-scaled") }
        let path = try args.require("-m")
        let threads = try args.int("-t", range: 1...1024) ?? 0
        let start = puna_now_ns()
        let model = try LanguageModel(path: path, options: ModelOptions(threads: threads))
        let set = try AdapterFlags.load(args, model: model)
        let summary = try model.writeMerged(set, to: output, type: type)
        let seconds = Double(puna_now_ns() - start) / 1e9
        var names: [String] = []
        for e in set.entries { names.append(e.scale == 1 ? e.adapter.name : "\(e.adapter.name)×\(fixed(Double(e.scale), 3))") }
        errLine("puna merge: \(names.joined(separator: " + ")) into \(summary.report.mergedTensors.count) of \(summary.tensorCount) tensors"
                + (summary.convertedTensors > 0 ? ", \(summary.convertedTensors) converted to \(type?.name ?? "?")" : "")
                + "; wrote \(output) (\(formatBytes(summary.fileBytes))) in \(fixed(seconds, 2)) s")
        for (name, t) in summary.fallbacks {
            errLine("puna merge: \(name): rows are not whole \(type?.name ?? "?") blocks, written as \(t.name)")
        }
        for line in AdapterFlags.reportLines(summary.report) { errLine("puna merge: " + line) }
        return 0
    }
}

/// `puna info --lora PATH [-m BASE]`: what an adapter holds (checked against the base when given).
enum AdapterInfo {
    static func run(_ args: ParsedArguments) throws(PunaError) -> Int32 {
        var model: LanguageModel? = nil
        if let p = args.string("-m") { model = try LanguageModel(path: p, options: ModelOptions(threads: 1)) }
        let json = args.has("--json")
        var j = JSONWriter()
        if json { j.beginArray() }
        for path in args.strings("--lora") {
            let adapter: LoRAAdapter
            if let model { adapter = try LoRAAdapter.load(path: path, for: model) } else { adapter = try LoRAAdapter.inspect(path: path) }
            var modules: [String: Int] = [:]
            var moduleOrder: [String] = []
            for t in adapter.targets {
                let parts = t.split(separator: ".")
                let key = parts.count == 4 ? String(parts[2]) : String(parts[0])
                if modules[key] == nil { moduleOrder.append(key) }
                modules[key, default: 0] += 1
            }
            let format = adapter.format == .peft ? "PEFT (safetensors)" : "GGUF LoRA"
            if json {
                j.beginObject()
                j.field("path", path)
                j.field("name", adapter.name)
                j.field("format", adapter.format == .peft ? "peft" : "gguf")
                j.field("rank", adapter.rank)
                j.key("alpha"); j.value(Double(adapter.alpha), decimals: 6)
                j.key("scale"); j.value(Double(adapter.baseScale), decimals: 6)
                j.field("rslora", adapter.usesRSLoRA)
                j.key("target_modules"); j.beginArray(); for m in adapter.targetModules { j.value(m) }; j.endArray()
                j.key("targets"); j.beginArray(); for t in adapter.targets { j.value(t) }; j.endArray()
                j.field("tensor_bytes", adapter.tensorBytes)
                j.field("checked_against_base", adapter.isBound)
                j.key("warnings"); j.beginArray(); for w in adapter.warnings { j.value(w) }; j.endArray()
                j.endObject()
            } else {
                var rows: [(String, String)] = [
                    ("adapter", path),
                    ("format", format),
                    ("rank", "\(adapter.rank)"),
                    ("alpha", fixed(Double(adapter.alpha), 4)),
                    ("scale", "\(fixed(Double(adapter.baseScale), 6)) (alpha/\(adapter.usesRSLoRA ? "sqrt(rank), rsLoRA" : "rank"))"),
                    ("target modules", adapter.targetModules.joined(separator: ", ")),
                ]
                var counts: [String] = []
                for m in moduleOrder { counts.append("\(m) ×\(modules[m]!)") }
                rows.append(("matrices", "\(adapter.targets.count): \(counts.joined(separator: ", "))"))
                rows.append(("tensor bytes", "\(formatBytes(adapter.tensorBytes)) (\(adapter.tensorBytes) bytes)"))
                rows.append(("checked against", model.map { $0.gguf.path } ?? "no base (give -m to check shapes)"))
                for w in adapter.warnings { rows.append(("warning", w)) }
                out(table(rows))
            }
        }
        if json {
            j.endArray()
            outLine(j.string)
        }
        return 0
    }
}
