import CPuna

/// config.json read the way convert_hf_to_gguf.py reads it for the LLaMA and Qwen2 families, and the
/// `<arch>.*` keys it writes from it, in its order.
struct ConvertHyperparameters {
    let arch: String
    let blockCount: Int
    let headCount: Int
    let headCountKV: Int
    let vocabSize: Int
    private var entries: [(String, GGUFValue)] = []
    private var tail: [(String, GGUFValue)] = []
    /// Llama 3's rope scaling as per-dimension frequency factors (rope_freqs.weight).
    private(set) var llama3RopeFactors: [Float]? = nil

    /// The first of `names` present (and not null) in the config.
    static func find(_ c: JSONValue, _ names: [String]) -> JSONValue? {
        for n in names { if let v = c[n], !v.isNull { return v } }
        return nil
    }

    static func isIntegerLiteral(_ v: JSONValue) -> Bool {
        guard let text = v.numberText else { return false }
        return !text.utf8.contains { $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "e") || $0 == UInt8(ascii: "E") }
    }

    static func count(_ c: JSONValue, _ names: [String], _ range: ClosedRange<Int>, file: String, required: Bool) throws(PunaError) -> Int? {
        guard let v = find(c, names) else {
            if required { throw PunaError("\(file): missing \(names.joined(separator: " / "))") }
            return nil
        }
        guard let n = v.int, range.contains(n) else {
            throw PunaError("\(file): \(names[0]) must be an integer from \(range.lowerBound) to \(range.upperBound)")
        }
        return n
    }

    static func number(_ v: JSONValue, _ what: String, file: String) throws(PunaError) -> Double {
        guard let d = v.double, d.isFinite else { throw PunaError("\(file): \(what) must be a finite number") }
        return d
    }

    init(_ c: JSONValue, arch: String, file: String) throws(PunaError) {
        self.arch = arch
        let p = arch + "."
        blockCount = try Self.count(c, ["n_layers", "num_hidden_layers", "n_layer", "num_layers"], 1...4096, file: file, required: true)!
        entries.append((p + "block_count", .uint32(UInt32(blockCount))))
        if let n = try Self.count(c, ["max_position_embeddings", "n_ctx", "n_positions", "max_length", "max_sequence_length", "model_max_length"], 1...Int(UInt32.max), file: file, required: false) {
            entries.append((p + "context_length", .uint32(UInt32(n))))
        }
        let embd = try Self.count(c, ["hidden_size", "n_embd", "dim"], 1...(1 << 20), file: file, required: true)!
        entries.append((p + "embedding_length", .uint32(UInt32(embd))))
        if let n = try Self.count(c, ["prefix_dense_intermediate_size", "dense_intermediate_size", "intermediate_size", "n_inner", "hidden_dim"], 1...(1 << 24), file: file, required: false) {
            entries.append((p + "feed_forward_length", .uint32(UInt32(n))))
        }
        headCount = try Self.count(c, ["num_attention_heads", "n_head", "n_heads"], 1...(1 << 14), file: file, required: true)!
        entries.append((p + "attention.head_count", .uint32(UInt32(headCount))))
        let kv = try Self.count(c, ["num_key_value_heads", "n_kv_heads"], 1...(1 << 14), file: file, required: false)
        if let kv { entries.append((p + "attention.head_count_kv", .uint32(UInt32(kv)))) }
        headCountKV = kv ?? headCount
        if c["is_causal"]?.bool == false { entries.append((p + "attention.causal", .bool(false))) }

        // rope_parameters (or rope_scaling), with the top-level theta and type mirrored in.
        var rope: [(key: String, value: JSONValue)] = (c["rope_parameters"] ?? .null).object ?? (c["rope_scaling"] ?? .null).object ?? []
        func ropeValue(_ key: String) -> JSONValue? { rope.first(where: { $0.key == key })?.value }
        if rope.contains(where: { $0.key == "full_attention" || $0.key == "sliding_attention" }) {
            throw PunaError("\(file): per-layer-type rope parameters are not supported by puna convert")
        }
        if ropeValue("rope_theta") == nil, let theta = Self.find(c, ["global_rope_theta", "rope_global_theta", "rope_theta_global", "rope_theta", "rotary_emb_base"]) {
            rope.append(("rope_theta", theta))
        }
        if ropeValue("rope_type") == nil, let t = ropeValue("type") { rope.append(("rope_type", t)) }
        if ropeValue("original_max_position_embeddings") == nil, let o = c["original_max_position_embeddings"], !o.isNull {
            rope.append(("original_max_position_embeddings", o))
        }
        if let ropeType = ropeValue("rope_type")?.string {
            let factor = ropeValue("factor").flatMap { $0.isNull ? nil : $0 }
            switch ropeType {
            case "linear" where factor != nil:
                entries.append((p + "rope.scaling.type", .string("linear")))
                entries.append((p + "rope.scaling.factor", .float32(Float(try Self.number(factor!, "rope factor", file: file)))))
            case "yarn" where factor != nil:
                entries.append((p + "rope.scaling.type", .string("yarn")))
                entries.append((p + "rope.scaling.factor", .float32(Float(try Self.number(factor!, "rope factor", file: file)))))
                guard let original = ropeValue("original_max_position_embeddings")?.int, original > 0, original <= Int(UInt32.max) else {
                    throw PunaError("\(file): yarn rope scaling needs original_max_position_embeddings")
                }
                entries.append((p + "rope.scaling.original_context_length", .uint32(UInt32(original))))
                for (key, names) in [("yarn_ext_factor", ["extrapolation_factor"]), ("yarn_attn_factor", ["attention_factor", "attn_factor"]),
                                     ("yarn_beta_fast", ["beta_fast"]), ("yarn_beta_slow", ["beta_slow"])] {
                    if let name = names.first(where: { ropeValue($0) != nil && !ropeValue($0)!.isNull }) {
                        entries.append((p + "rope.scaling." + key, .float32(Float(try Self.number(ropeValue(name)!, name, file: file)))))
                    }
                }
            case "su", "longrope":
                throw PunaError("\(file): longrope scaling is not supported by puna convert")
            case "llama3":
                break   // becomes rope_freqs.weight below
            case "linear", "yarn", "default", "dynamic":
                break   // without a factor the converter writes nothing for these
            default:
                throw PunaError("\(file): rope type '\(clipped(ropeType))' is not supported by puna convert")
            }
        }
        if let theta = ropeValue("rope_theta"), !theta.isNull {
            entries.append((p + "rope.freq_base", .float32(Float(try Self.number(theta, "rope_theta", file: file)))))
        }
        if let eps = Self.find(c, ["rms_norm_eps", "norm_eps"]) {
            entries.append((p + "attention.layer_norm_rms_epsilon", .float32(Float(try Self.number(eps, "rms_norm_eps", file: file)))))
        }
        if let eps = Self.find(c, ["layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"]) {
            entries.append((p + "attention.layer_norm_epsilon", .float32(Float(try Self.number(eps, "layer_norm_eps", file: file)))))
        }
        let headDim = try Self.count(c, ["head_dim"], 1...(1 << 16), file: file, required: false)
        if let headDim {
            entries.append((p + "attention.key_length", .uint32(UInt32(headDim))))
            entries.append((p + "attention.value_length", .uint32(UInt32(headDim))))
        }
        vocabSize = try Self.count(c, ["vocab_size"], 1...(1 << 24), file: file, required: true)!
        if arch == "llama" {
            tail.append((p + "vocab_size", .uint32(UInt32(vocabSize))))
            let ropeDim = headDim ?? embd / headCount
            tail.append((p + "rope.dimension_count", .uint32(UInt32(ropeDim))))
            if ropeValue("rope_type")?.string == "llama3" {
                let base = try ropeValue("rope_theta").map { (v) throws(PunaError) in try Self.number(v, "rope_theta", file: file) } ?? 10000
                func param(_ key: String, _ fallback: Double) throws(PunaError) -> Double {
                    guard let v = ropeValue(key), !v.isNull else { return fallback }
                    return try Self.number(v, key, file: file)
                }
                llama3RopeFactors = Self.llama3Factors(base: base, dim: ropeDim, factor: try param("factor", 8),
                                                       low: try param("low_freq_factor", 1), high: try param("high_freq_factor", 4),
                                                       originalContext: try param("original_max_position_embeddings", 8192))
            }
        }
    }

    /// Llama 3's per-frequency scaling, in float32 as the converter's torch arithmetic does it.
    static func llama3Factors(base: Double, dim: Int, factor: Double, low: Double, high: Double, originalContext: Double) -> [Float] {
        let lowWavelength = Float(originalContext / low), highWavelength = Float(originalContext / high)
        var out: [Float] = []
        for i in stride(from: 0, to: dim, by: 2) {
            let exponent = Float(i) / Float(dim)
            let freq = 1 / Float(puna_pow(Double(Float(base)), Double(exponent)))
            let wavelength = Float(2 * Double.pi) / freq
            if wavelength < highWavelength {
                out.append(1)
            } else if wavelength > lowWavelength {
                out.append(Float(factor))
            } else {
                let smooth = (Float(originalContext) / wavelength - Float(low)) / Float(high - low)
                out.append(1 / ((1 - smooth) / Float(factor) + smooth))
            }
        }
        return out
    }

    /// The hyperparameter keys, general.file_type where the converter puts it, then the arch's extras.
    func keys(fileType: UInt32) -> [(String, GGUFValue)] {
        entries + [("general.file_type", .uint32(fileType))] + tail
    }

    // MARK: general.*

    /// general.* keys after general.type, as gguf-py's metadata heuristics make them from a README.md
    /// model card's front matter (`card`: names, license, base models, datasets, tags, languages),
    /// config.json's _name_or_path, the folder's name, the parameter count and generation_config.json's
    /// sampling settings.
    static func generalKeys(folder: String, config: JSONValue, parameters: Int, card: ModelCardMetadata = ModelCardMetadata()) throws(PunaError) -> [(String, GGUFValue)] {
        // The model card's values first; "" is a value the card set that is not written.
        var name = card.name, organization = card.organization, basename = card.basename
        var finetune = card.finetune, version = card.version, sizeLabel = card.sizeLabel
        func take(_ parts: ModelIDParts) {
            if name == nil, let n = parts.fullName { name = ConvertNaming.title(n) }
            if organization == nil, let o = parts.organization { organization = ConvertNaming.title(o) }
            if basename == nil { basename = parts.basename }
            if finetune == nil { finetune = parts.finetune }
            if version == nil { version = parts.version }
            if sizeLabel == nil { sizeLabel = parts.sizeLabel }
        }
        if let id = config["_name_or_path"]?.string, id.utf8.filter({ $0 == UInt8(ascii: "/") }).count <= 1 {
            take(ConvertNaming.idParts(id, totalParameters: parameters))
        }
        var trimmed = folder
        while trimmed.count > 1 && trimmed.hasSuffix("/") { trimmed.removeLast() }
        take(ConvertNaming.idParts(baseName(trimmed), totalParameters: parameters))
        if sizeLabel == nil && parameters > 0 { sizeLabel = ConvertNaming.sizeLabel(parameters: parameters) }

        var keys: [(String, GGUFValue)] = []
        let generationPath = folder + "/generation_config.json"
        if puna_path_exists(generationPath) != 0, let generation = try? HuggingFaceFolder.readJSON(generationPath), generation.object != nil {
            let sampling: [(key: String, names: [String], integer: Bool)] = [
                ("sequence", ["sequence"], false), ("top_k", ["top_k"], true), ("top_p", ["top_p"], false), ("min_p", ["min_p"], false),
                ("xtc_probability", ["xtc_probability"], false), ("xtc_threshold", ["xtc_threshold"], false), ("temp", ["temperature"], false),
                ("penalty_last_n", ["penalty_last_n"], true), ("penalty_repeat", ["penalty_repeat", "repetition_penalty"], false),
                ("mirostat", ["mirostat"], true), ("mirostat_tau", ["mirostat_tau"], false), ("mirostat_eta", ["mirostat_eta"], false),
            ]
            for s in sampling {
                guard let v = s.names.lazy.compactMap({ generation[$0] }).first, !v.isNull else { continue }
                let key = "general.sampling." + s.key
                if s.key == "sequence" {
                    guard let text = v.string else { throw PunaError("\(generationPath): sequence must be a string") }
                    keys.append((key, .string(text)))
                } else if s.integer {
                    guard let n = v.int, let n32 = Int32(exactly: n) else { throw PunaError("\(generationPath): \(s.names[0]) must be an integer") }
                    keys.append((key, .int32(n32)))
                } else {
                    keys.append((key, .float32(Float(try number(v, s.names[0], file: generationPath)))))
                }
            }
        }
        // gguf-py writes no empty text.
        func text(_ key: String, _ value: String?) { if let value, !value.isEmpty { keys.append((key, .string(value))) } }
        text("general.name", name ?? baseName(trimmed))
        text("general.author", card.author)
        text("general.version", version)
        text("general.organization", organization)
        text("general.finetune", finetune)
        text("general.basename", basename)
        text("general.description", card.description)
        text("general.size_label", sizeLabel)
        keys += card.keysAfterSizeLabel()
        return keys
    }
}
