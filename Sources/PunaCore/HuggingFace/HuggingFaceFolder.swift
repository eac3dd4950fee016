import CPuna

/// A Hugging Face model folder (what `save_pretrained` writes) read as the keys and tensors of a
/// GGUF file, so that everything reading a `GGUFFile` reads it too: `config.json` becomes the
/// `<arch>.*` keys convert_hf_to_gguf.py would write, `tokenizer.model` or `tokenizer.json` the
/// `tokenizer.*` keys, `tokenizer_config.json` the chat template and BOS/EOS flags,
/// `generation_config.json` the end-of-generation ids, and the tensors of `model.safetensors` (or of
/// the shards `model.safetensors.index.json` names) keep their bytes in place, memory-mapped.
/// Q/K rows stay in Hugging Face's order (GGUFFile.isHuggingFaceFolder says so).
struct HuggingFaceFolder {
    private(set) var keys: [String] = []
    private(set) var metadata: [String: GGUFValue] = [:]
    private(set) var tensors: [GGUFTensorInfo] = []
    private(set) var files: [MappedFile] = []
    /// The quantized matrices of a bitsandbytes folder (nil for F32/F16/BF16 folders).
    private(set) var bitsAndBytes: BitsAndBytesWeights? = nil
    let path: String

    /// Hugging Face class → GGUF architecture, for the classes whose tensors map one to one.
    static let architectures: [(hfClass: String, arch: String)] = [
        ("LlamaForCausalLM", "llama"), ("MistralForCausalLM", "llama"),
        ("Qwen2ForCausalLM", "qwen2"), ("Qwen3ForCausalLM", "qwen3"),
    ]
    static let maxJSONBytes = 64 << 20   // tokenizer.json of a 256k vocabulary is ~35 MB

    init(path: String) throws(PunaError) {
        self.path = path
        let configPath = path + "/config.json"
        guard puna_path_exists(configPath) != 0 else {
            throw PunaError("\(path): a directory without config.json: neither a GGUF file nor a Hugging Face model folder")
        }
        let config = try HuggingFaceFolder.readJSON(configPath)
        guard config.object != nil else { throw PunaError("\(configPath): not a JSON object") }
        let hfClass = config["architectures"]?[0]?.string ?? ""
        guard let arch = HuggingFaceFolder.architectures.first(where: { $0.hfClass == hfClass })?.arch else {
            let known = HuggingFaceFolder.architectures.map { $0.hfClass }.joined(separator: ", ")
            throw PunaError("\(configPath): architectures[0] '\(clipped(hfClass))' is not supported in Hugging Face folders (supported: \(known); convert other models to GGUF)")
        }
        if let q = config["quantization_config"], !q.isNull {
            bitsAndBytes = try BitsAndBytesWeights(config: q, file: configPath)
        }
        set("general.architecture", .string(arch))
        set("general.name", .string(baseName(path)))
        try readHyperparameters(config, arch: arch, file: configPath)
        let vocabSize = try HuggingFaceFolder.int(config, "vocab_size", 1...(1 << 24), file: configPath)
        try readTensors(arch: arch, blocks: metadata[arch + ".block_count"]!.intValue!)
        try readTokenizer(vocabSize: vocabSize)
    }

    private mutating func set(_ key: String, _ value: GGUFValue) {
        if metadata[key] == nil { keys.append(key) }
        metadata[key] = value
    }

    // MARK: config.json

    static func readJSON(_ file: String) throws(PunaError) -> JSONValue {
        try withInputBytes(file, maxBytes: maxJSONBytes, limitNote: "Puna's limit for a model folder's JSON files") { bytes throws(PunaError) in
            do throws(PunaError) { return try JSONValue.parse(bytes: bytes) } catch {
                throw PunaError("\(file): not valid JSON: \(error.message)")
            }
        }
    }

    static func int(_ json: JSONValue, _ key: String, _ range: ClosedRange<Int>, file: String) throws(PunaError) -> Int {
        guard let value = json[key], !value.isNull else { throw PunaError("\(file): missing \(key)") }
        guard let n = value.int, range.contains(n) else {
            throw PunaError("\(file): \(key) must be an integer from \(range.lowerBound) to \(range.upperBound)")
        }
        return n
    }

    static func optionalInt(_ json: JSONValue, _ key: String, _ range: ClosedRange<Int>, file: String) throws(PunaError) -> Int? {
        guard let value = json[key], !value.isNull else { return nil }
        return try int(json, key, range, file: file)
    }

    static func optionalDouble(_ json: JSONValue, _ key: String, _ range: ClosedRange<Double>, file: String) throws(PunaError) -> Double? {
        guard let value = json[key], !value.isNull else { return nil }
        guard let d = value.double, d.isFinite, range.contains(d) else {
            throw PunaError("\(file): \(key) must be a number from \(range.lowerBound) to \(range.upperBound)")
        }
        return d
    }

    private mutating func readHyperparameters(_ c: JSONValue, arch: String, file: String) throws(PunaError) {
        let embd = try HuggingFaceFolder.int(c, "hidden_size", 1...(1 << 20), file: file)
        let heads = try HuggingFaceFolder.int(c, "num_attention_heads", 1...(1 << 12), file: file)
        let kvHeads = try HuggingFaceFolder.optionalInt(c, "num_key_value_heads", 1...(1 << 12), file: file) ?? heads
        set(arch + ".block_count", .uint32(UInt32(try HuggingFaceFolder.int(c, "num_hidden_layers", 1...(1 << 12), file: file))))
        set(arch + ".context_length", .uint32(UInt32(try HuggingFaceFolder.optionalInt(c, "max_position_embeddings", 1...(1 << 24), file: file) ?? 4096)))
        set(arch + ".embedding_length", .uint32(UInt32(embd)))
        set(arch + ".feed_forward_length", .uint32(UInt32(try HuggingFaceFolder.int(c, "intermediate_size", 1...(1 << 22), file: file))))
        set(arch + ".attention.head_count", .uint32(UInt32(heads)))
        set(arch + ".attention.head_count_kv", .uint32(UInt32(kvHeads)))
        if let headDim = try HuggingFaceFolder.optionalInt(c, "head_dim", 1...(1 << 14), file: file) {
            set(arch + ".attention.key_length", .uint32(UInt32(headDim)))
            set(arch + ".attention.value_length", .uint32(UInt32(headDim)))
        }
        set(arch + ".rope.freq_base", .float32(Float(try HuggingFaceFolder.optionalDouble(c, "rope_theta", 1...1e10, file: file) ?? 10000)))
        set(arch + ".attention.layer_norm_rms_epsilon", .float32(Float(try HuggingFaceFolder.optionalDouble(c, "rms_norm_eps", 1e-12...1, file: file) ?? 1e-6)))
        if let window = try HuggingFaceFolder.optionalInt(c, "sliding_window", 0...(1 << 24), file: file),
           c["use_sliding_window"]?.bool ?? (arch == "llama") {
            set(arch + ".attention.sliding_window", .uint32(UInt32(window)))
        }
        if let scaling = c["rope_scaling"], !scaling.isNull {
            let type = scaling["rope_type"]?.string ?? scaling["type"]?.string ?? "?"
            guard type == "linear" || type == "default" else {
                throw PunaError("\(file): rope_scaling type '\(clipped(type))' is not supported in Hugging Face folders yet (linear is; convert to GGUF for others)")
            }
            if type == "linear" {
                set(arch + ".rope.scaling.type", .string("linear"))
                set(arch + ".rope.scaling.factor", .float32(Float(try HuggingFaceFolder.optionalDouble(scaling, "factor", 1e-3...1e4, file: file + " rope_scaling") ?? 1)))
            }
        }
    }

    // MARK: tensors

    /// Hugging Face parameter name → GGUF tensor name (nil: not a tensor Puna maps).
    static func ggufName(_ hf: String) -> String? {
        switch hf {
        case "model.embed_tokens.weight": return "token_embd.weight"
        case "model.norm.weight": return "output_norm.weight"
        case "lm_head.weight": return "output.weight"
        default: break
        }
        let parts = hf.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        guard parts.count >= 5, parts[0] == "model", parts[1] == "layers", let layer = Int(parts[2]), layer >= 0 else { return nil }
        let rest = parts[3...].joined(separator: ".")
        let table: [(String, String)] = [
            ("input_layernorm.weight", "attn_norm.weight"),
            ("self_attn.q_proj.weight", "attn_q.weight"), ("self_attn.k_proj.weight", "attn_k.weight"),
            ("self_attn.v_proj.weight", "attn_v.weight"), ("self_attn.o_proj.weight", "attn_output.weight"),
            ("self_attn.q_proj.bias", "attn_q.bias"), ("self_attn.k_proj.bias", "attn_k.bias"),
            ("self_attn.v_proj.bias", "attn_v.bias"),
            ("self_attn.q_norm.weight", "attn_q_norm.weight"), ("self_attn.k_norm.weight", "attn_k_norm.weight"),
            ("post_attention_layernorm.weight", "ffn_norm.weight"),
            ("mlp.gate_proj.weight", "ffn_gate.weight"), ("mlp.up_proj.weight", "ffn_up.weight"),
            ("mlp.down_proj.weight", "ffn_down.weight"),
        ]
        guard let gguf = table.first(where: { $0.0 == rest })?.1 else { return nil }
        return "blk.\(layer).\(gguf)"
    }

    private mutating func readTensors(arch: String, blocks: Int) throws(PunaError) {
        // The shards: those the index names, in its order, or the one model.safetensors.
        let shards = try SafetensorsShards(folder: path)
        let indexPath = shards.indexPath, shardNames = shards.names, weightMap = shards.weightMap
        var seen: [String: String] = [:]   // GGUF name → shard it came from
        // bitsandbytes: quantized weights and their companions, put together once every shard is read.
        var parts: [String: BitsAndBytesWeights.Part] = [:]
        var quantized: [(hf: String, gguf: String)] = []
        for (source, shard) in shardNames.enumerated() {
            let shardPath = path + "/" + shard
            guard puna_path_exists(shardPath) != 0 else {
                throw PunaError("\(indexPath): names shard '\(clipped(shard))', which is not in the folder")
            }
            let st = try SafetensorsFile(path: shardPath)
            files.append(st.file)
            for t in st.tensors {
                if t.name.hasSuffix("rotary_emb.inv_freq") { continue }   // recomputed, as every runtime does
                try shards.checkListed(t.name, in: shard, path: shardPath)
                if bitsAndBytes != nil, BitsAndBytesWeights.isCompanion(t.name) {
                    if parts[t.name] != nil { throw PunaError("\(shardPath): tensor '\(clipped(t.name))' is in two shards") }
                    parts[t.name] = BitsAndBytesWeights.Part(info: t, source: source, path: shardPath, bytes: st.data(of: t))
                    continue
                }
                guard let name = HuggingFaceFolder.ggufName(t.name) else {
                    throw PunaError("\(shardPath): tensor '\(clipped(t.name))' is not part of a \(arch) model as Puna reads it")
                }
                if let layer = HuggingFaceFolder.layerIndex(name), layer >= blocks {
                    throw PunaError("\(shardPath): tensor '\(clipped(t.name))' is for layer \(layer), but config.json has \(blocks) layers")
                }
                if let bnb = bitsAndBytes, t.dtype == "U8" || t.dtype == "I8" {
                    let part = BitsAndBytesWeights.Part(info: t, source: source, path: shardPath, bytes: st.data(of: t))
                    guard name.hasSuffix(".weight") else {
                        throw PunaError("\(shardPath): tensor '\(clipped(t.name))' has dtype \(t.dtype), but only weights are \(bnb.scheme)-quantized")
                    }
                    if let other = seen[name] { throw PunaError("\(shardPath): tensor '\(clipped(t.name))' is also in \(other)") }
                    seen[name] = shard
                    parts[t.name] = part
                    quantized.append((t.name, name))
                    continue
                }
                guard let type = t.ggmlType else {
                    throw PunaError("\(shardPath): tensor '\(clipped(t.name))' has dtype \(t.dtype); Puna computes with F32, F16 and BF16")
                }
                guard (1...2).contains(t.shape.count) else {
                    throw PunaError("\(shardPath): tensor '\(clipped(t.name))' has \(t.shape.count) dimensions, expected 1 or 2")
                }
                if let other = seen[name] {
                    throw PunaError("\(shardPath): tensor '\(clipped(t.name))' is also in \(other)")
                }
                seen[name] = shard
                tensors.append(GGUFTensorInfo(name: name, shape: Array(t.shape.reversed()), type: type, offset: t.offset,
                                              byteCount: t.byteCount, source: source))
            }
        }
        if let bnb = bitsAndBytes {
            // Every companion belongs to a quantized weight.
            try bnb.checkCompanions(parts, owners: Set(quantized.map { $0.hf }))
            // add() reads the small companions (quant_state, tables, nested absmax, SCB), which lie
            // between the packed weights: from a cold page cache each would be its own synchronous
            // page fault, hundreds in a row, so all of them are asked for at once first.
            let small = parts.values.filter { $0.info.byteCount <= 1 << 16 && BitsAndBytesWeights.isCompanion($0.info.name) }
            for p in small.sorted(by: { ($0.source, $0.info.offset) < ($1.source, $1.info.offset) }) {
                files[p.source].advise(offset: p.info.offset, count: p.info.byteCount, .willNeed)
            }
            for (hf, gguf) in quantized {
                tensors.append(try bnb.add(weight: hf, name: gguf, parts: parts))
            }
        }
        for listed in weightMap where !listed.tensor.hasSuffix("rotary_emb.inv_freq") && !(bitsAndBytes != nil && BitsAndBytesWeights.isCompanion(listed.tensor)) {
            guard let name = HuggingFaceFolder.ggufName(listed.tensor), seen[name] != nil else {
                throw PunaError("\(indexPath): tensor '\(clipped(listed.tensor))' is listed in shard '\(clipped(listed.shard))' but not there")
            }
        }
    }

    static func layerIndex(_ gguf: String) -> Int? {
        guard gguf.hasPrefix("blk.") else { return nil }
        return Int(gguf.dropFirst(4).prefix { $0 != "." })
    }

    // MARK: tokenizer

    private mutating func readTokenizer(vocabSize: Int) throws(PunaError) {
        let tokenizerConfigPath = path + "/tokenizer_config.json"
        let tokenizerConfig = puna_path_exists(tokenizerConfigPath) != 0 ? try HuggingFaceFolder.readJSON(tokenizerConfigPath) : .null
        var vocab: HuggingFaceVocab
        if puna_path_exists(path + "/tokenizer.model") != 0 {
            vocab = try HuggingFaceVocab(sentencePiece: path + "/tokenizer.model")
        } else if puna_path_exists(path + "/tokenizer.json") != 0 {
            vocab = try HuggingFaceVocab(tokenizerJSON: path + "/tokenizer.json")
        } else {
            throw PunaError("\(path): no tokenizer.model or tokenizer.json")
        }
        vocab.applyConfig(tokenizerConfig)
        let generationPath = path + "/generation_config.json"
        if puna_path_exists(generationPath) != 0 {
            let generation = try HuggingFaceFolder.readJSON(generationPath)
            var eos: [Int] = []
            if let one = generation["eos_token_id"]?.int { eos = [one] }
            if let list = generation["eos_token_id"]?.array { for v in list { if let id = v.int { eos.append(id) } } }
            if let first = eos.first { vocab.eos = first }
            if eos.count > 1 { vocab.eot = eos[1] }
            if let bos = generation["bos_token_id"]?.int { vocab.bos = bos }
        }
        guard vocab.tokens.count <= vocabSize else {
            throw PunaError("\(path): the tokenizer has \(vocab.tokens.count) tokens but config.json's vocab_size is \(vocabSize)")
        }
        // The embedding may have more rows than the tokenizer has tokens: unused placeholders.
        while vocab.tokens.count < vocabSize {
            vocab.tokens.append("[PAD\(vocab.tokens.count)]")
            vocab.types.append(5)
            if !vocab.scores.isEmpty { vocab.scores.append(-1e9) }
        }
        for (name, id) in [("bos", vocab.bos), ("eos", vocab.eos), ("unknown", vocab.unk), ("eot", vocab.eot)] {
            if let id, id < 0 || id >= vocabSize { throw PunaError("\(path): \(name) token id \(id) is outside the vocabulary (\(vocabSize))") }
        }
        set("tokenizer.ggml.model", .string(vocab.model))
        if let pre = vocab.pre { set("tokenizer.ggml.pre", .string(pre)) }
        set("tokenizer.ggml.tokens", .array(.string, vocab.tokens.map { .string($0) }))
        if !vocab.scores.isEmpty { set("tokenizer.ggml.scores", .array(.float32, vocab.scores.map { .float32($0) })) }
        set("tokenizer.ggml.token_type", .array(.int32, vocab.types.map { .int32($0) }))
        if !vocab.merges.isEmpty { set("tokenizer.ggml.merges", .array(.string, vocab.merges.map { .string($0) })) }
        if let id = vocab.bos { set("tokenizer.ggml.bos_token_id", .uint32(UInt32(id))) }
        if let id = vocab.eos { set("tokenizer.ggml.eos_token_id", .uint32(UInt32(id))) }
        if let id = vocab.unk { set("tokenizer.ggml.unknown_token_id", .uint32(UInt32(id))) }
        if let id = vocab.eot { set("tokenizer.ggml.eot_token_id", .uint32(UInt32(id))) }
        set("tokenizer.ggml.add_bos_token", .bool(vocab.addBOS))
        set("tokenizer.ggml.add_eos_token", .bool(vocab.addEOS))
        if let prefix = vocab.addSpacePrefix { set("tokenizer.ggml.add_space_prefix", .bool(prefix)) }
        if let template = vocab.chatTemplate { set("tokenizer.chat_template", .string(template)) }
    }
}

/// The safetensors files of a Hugging Face folder: the shards model.safetensors.index.json names, in
/// the index's order and each once, with its tensor → shard map; or the one model.safetensors (an
/// empty map). Weights only as pytorch_model.bin, or none at all, are errors naming the folder.
struct SafetensorsShards {
    let indexPath: String
    let names: [String]
    let weightMap: [(tensor: String, shard: String)]

    init(folder: String) throws(PunaError) {
        indexPath = folder + "/model.safetensors.index.json"
        var names: [String] = []
        var weightMap: [(tensor: String, shard: String)] = []
        if puna_path_exists(indexPath) != 0 {
            let index = try HuggingFaceFolder.readJSON(indexPath)
            guard let map = index["weight_map"]?.object else { throw PunaError("\(indexPath): no weight_map object") }
            for (tensor, value) in map {
                guard let shard = value.string, !shard.isEmpty, !containsText(shard, "/") else {
                    throw PunaError("\(indexPath): weight_map entry of '\(clipped(tensor))' must name a file in the folder")
                }
                weightMap.append((tensor, shard))
                if !names.contains(shard) { names.append(shard) }
            }
            guard !names.isEmpty else { throw PunaError("\(indexPath): weight_map is empty") }
        } else if puna_path_exists(folder + "/model.safetensors") != 0 {
            names = ["model.safetensors"]
        } else if puna_path_exists(folder + "/pytorch_model.bin") != 0 {
            throw PunaError("\(folder): weights only as pytorch_model.bin (a pickle, which Puna does not read): save them with safe_serialization=True")
        } else {
            throw PunaError("\(folder): no model.safetensors or model.safetensors.index.json")
        }
        self.names = names
        self.weightMap = weightMap
    }

    /// With an index: `tensor`, found in `shard` (at `path`), must be listed there.
    func checkListed(_ tensor: String, in shard: String, path: String) throws(PunaError) {
        guard !weightMap.isEmpty else { return }
        guard let listed = weightMap.first(where: { $0.tensor == tensor }) else {
            throw PunaError("\(path): tensor '\(clipped(tensor))' is not in \(baseName(indexPath))'s weight_map")
        }
        guard listed.shard == shard else {
            throw PunaError("\(path): tensor '\(clipped(tensor))' is listed in shard '\(clipped(listed.shard))' by \(baseName(indexPath))")
        }
    }
}
