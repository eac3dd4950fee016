import CPuna

// `puna convert`: a Hugging Face model folder to a GGUF file whose keys and tensors are those
// llama.cpp's convert_hf_to_gguf.py writes (f32/f16/bf16), or those llama-quantize writes from the
// converter's f16 file (quantized types): same key order and values, same tensor order, types and
// bytes. The rules followed (facts about those tools' output, not their code):
// - tensors in the order the converter reads them: shards sorted by name, each shard's tensors sorted
//   by name; 1-D tensors, norms and biases F32, the other matrices in the requested type;
// - LLaMA's q_proj/k_proj rows regrouped per head from halves [x0..x(d/2-1) | y0..] to pairs (x0 y0 x1 y1 …);
// - quantized files: tensors sorted as llama.cpp's loader lists them (non-layer tensors first, then
//   layer by layer, by name), llama-quantize's per-tensor type choice (output/tied embedding → Q6_K,
//   q4_k_m/q5_k_m promote some attn_v/ffn_down layers to Q6_K, fallbacks for rows that are not whole
//   blocks), quantization from the f16 values, file_type/quantization_version moved to the end.

/// An output type of `puna convert`: the file type llama.cpp names it by and its main tensor type.
public struct ConvertType: Equatable {
    public let name: String
    /// general.file_type (llama.cpp's LLAMA_FTYPE_*).
    public let fileType: UInt32
    /// The type most matrices get.
    public let baseType: GGMLType

    /// Quantized types are made the way llama-quantize makes them from the converter's f16 file.
    public var isQuantized: Bool { baseType.isQuantized }

    public static let f32 = ConvertType(name: "f32", fileType: 0, baseType: .f32)
    public static let f16 = ConvertType(name: "f16", fileType: 1, baseType: .f16)
    public static let bf16 = ConvertType(name: "bf16", fileType: 32, baseType: .bf16)
    public static let all: [ConvertType] = [
        .f32, .f16, .bf16,
        ConvertType(name: "q8_0", fileType: 7, baseType: .q8_0),
        ConvertType(name: "q4_0", fileType: 2, baseType: .q4_0),
        ConvertType(name: "q4_1", fileType: 3, baseType: .q4_1),
        ConvertType(name: "q5_0", fileType: 8, baseType: .q5_0),
        ConvertType(name: "q5_1", fileType: 9, baseType: .q5_1),
        ConvertType(name: "q4_k_s", fileType: 14, baseType: .q4_K),
        ConvertType(name: "q4_k_m", fileType: 15, baseType: .q4_K),
        ConvertType(name: "q5_k_s", fileType: 16, baseType: .q5_K),
        ConvertType(name: "q5_k_m", fileType: 17, baseType: .q5_K),
        ConvertType(name: "q6_k", fileType: 18, baseType: .q6_K),
    ]

    /// By name, any case ("Q4_K_M", "f16").
    public static func named(_ name: String) -> ConvertType? {
        let wanted = name.lowercased()
        return all.first { $0.name == wanted }
    }

    public static var names: String { all.map { $0.name }.joined(separator: ", ") }
}

/// One weight of the source model: its Hugging Face name, its PyTorch shape (outermost first), the
/// float type it is stored in (nil for anything else, e.g. a bitsandbytes weight), and how to decode
/// rows of it to f32. A row is the innermost dimension; a 1-D tensor is one row. Sources other than
/// plain safetensors (bitsandbytes NF4/int8 folders, say) plug in by supplying `decodeRows`.
public struct ConvertSourceTensor {
    public let name: String
    public let shape: [Int]
    public let storedType: GGMLType?
    /// Decode `count` rows starting at row `first` into `out` (count × rowLength floats).
    public let decodeRows: (_ first: Int, _ count: Int, _ out: UnsafeMutablePointer<Float>) throws(PunaError) -> Void

    public init(name: String, shape: [Int], storedType: GGMLType?,
                decodeRows: @escaping (_ first: Int, _ count: Int, _ out: UnsafeMutablePointer<Float>) throws(PunaError) -> Void) {
        self.name = name
        self.shape = shape
        self.storedType = storedType
        self.decodeRows = decodeRows
    }

    public var rowLength: Int { shape.last ?? 1 }
    public var rowCount: Int { shape.count <= 1 ? 1 : shape.dropLast().reduce(1, *) }

    /// The tensors of a folder's safetensors files (F32, F16, BF16), read in place, in the order the
    /// converter reads them: the shards the index names (or model.safetensors), sorted, and each
    /// shard's tensors sorted by name.
    ///
    /// With `bitsAndBytes` (a folder whose quantization_config is bitsandbytes), its quantized weights
    /// (U8 packed 4-bit codes, I8 LLM.int8 rows) take their place in that order, each decoding through
    /// bitsandbytes' own dequantization (puna_bnb.h: the values bitsandbytes' dequantize_4bit /
    /// int8_vectorwise_dequant return, bit for bit: f32, rounded to f16 or bf16 when a 4-bit matrix's
    /// quant_state names that dtype), after every size, table and quant_state was checked
    /// as `-m FOLDER` checks them; their companion tensors (absmax, quant_map, nested_absmax,
    /// nested_quant_map, quant_state.*, SCB, weight_format) are consumed, not listed. Unquantized
    /// tensors (embeddings, norms, lm_head, biases) are read as in any folder.
    public static func safetensors(folder: String, bitsAndBytes bnb: BitsAndBytesWeights? = nil) throws(PunaError) -> [ConvertSourceTensor] {
        let index = try SafetensorsShards(folder: folder)
        let indexPath = index.indexPath, listed = index.weightMap
        // the converter's order: shards sorted by name
        let shards = index.names.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
        var out: [ConvertSourceTensor] = []
        var seen: [String: String] = [:]
        // bitsandbytes: the quantized weights and their companions, put together once every shard is read.
        var parts: [String: BitsAndBytesWeights.Part] = [:]
        var quantized: [(slot: Int, name: String)] = []
        var mapped: [SafetensorsFile] = []
        for (shardIndex, shard) in shards.enumerated() {
            let path = folder + "/" + shard
            guard puna_path_exists(path) != 0 else { throw PunaError("\(indexPath): names shard '\(clipped(shard))', which is not in the folder") }
            let file = try SafetensorsFile(path: path)
            mapped.append(file)
            let sorted = file.tensors.sorted { $0.name.utf8.lexicographicallyPrecedes($1.name.utf8) }
            for t in sorted {
                try index.checkListed(t.name, in: shard, path: path)
                if let other = seen[t.name] { throw PunaError("\(path): tensor '\(clipped(t.name))' is also in \(other)") }
                seen[t.name] = shard
                if let bnb, BitsAndBytesWeights.isCompanion(t.name) || t.dtype == "U8" || t.dtype == "I8" {
                    if !BitsAndBytesWeights.isCompanion(t.name) {
                        guard t.name.hasSuffix(".weight") else {
                            throw PunaError("\(path): tensor '\(clipped(t.name))' has dtype \(t.dtype), but only weights are \(bnb.scheme)-quantized")
                        }
                        // A slot in the converter's order, filled once the companions are all read.
                        quantized.append((out.count, t.name))
                        out.append(ConvertSourceTensor(name: t.name, shape: [], storedType: nil) { (_, _, _) throws(PunaError) in
                            throw PunaError("internal error: bitsandbytes weight read before it was assembled")
                        })
                    }
                    parts[t.name] = BitsAndBytesWeights.Part(info: t, source: shardIndex, path: path, bytes: file.data(of: t))
                    continue
                }
                guard let type = t.ggmlType else {
                    throw PunaError("\(path): tensor '\(clipped(t.name))' has dtype \(clipped(t.dtype)); puna convert reads F32, F16 and BF16 weights")
                }
                let rowLength = t.shape.last ?? 1
                guard let rowBytes = type.rowBytes(rowLength) else { throw PunaError("\(path): tensor '\(clipped(t.name))': bad row length") }
                let name = t.name
                // The closure holds the file, which keeps the mapping alive.
                out.append(ConvertSourceTensor(name: t.name, shape: t.shape, storedType: type) { (first, count, dest) throws(PunaError) in
                    let data = file.data(of: t)
                    guard first >= 0, count >= 0, (first + count) * rowBytes <= data.count else {
                        throw PunaError("\(path): rows \(first)..<\(first + count) of '\(clipped(name))' lie outside its data")
                    }
                    try type.decode(data.baseAddress! + first * rowBytes, into: dest, count: count * rowLength)
                })
            }
        }
        for entry in listed where seen[entry.tensor] == nil {
            throw PunaError("\(indexPath): tensor '\(clipped(entry.tensor))' is listed in shard '\(clipped(entry.shard))' but not there")
        }
        if let bnb {
            try bnb.checkCompanions(parts, owners: Set(quantized.map { $0.name }))
            let files = mapped   // the descriptors point into these mappings: the closures keep them alive
            for (slot, name) in quantized {
                // Checks the packed size, absmax, tables and quant_state against the shape (hostile folders).
                let info = try bnb.add(weight: name, name: name, parts: parts)
                let cols = info.rowLength, rows = info.rowCount, type = info.type, rounded = bnb.dequantizedType(name)
                out[slot] = ConvertSourceTensor(name: name, shape: [rows, cols], storedType: nil) { (first, count, dest) throws(PunaError) in
                    _ = files
                    guard first >= 0, count >= 0, first <= rows - count else {
                        throw PunaError("\(folder): rows \(first)..<\(first + count) of '\(clipped(name))' lie outside its \(rows) rows")
                    }
                    try bnb.dequantize(name, type: type, cols: cols, first: first, count: count, into: dest)
                    if let rounded {
                        // dequantize_4bit returns the quant_state's dtype: its f32 result rounded to it.
                        let scratch = UnsafeMutableRawPointer.allocate(byteCount: max(2 * count * cols, 2), alignment: 16)
                        defer { scratch.deallocate() }
                        try rounded.encode(dest, into: scratch, count: count * cols)
                        try rounded.decode(scratch, into: dest, count: count * cols)
                    }
                }
            }
        }
        return out
    }
}

/// What `puna convert` wrote.
public struct ConvertSummary {
    public var architecture = ""
    public var type = ConvertType.f16
    public var tensorCount = 0
    public var fileBytes = 0
    public var parameterCount = 0
    /// Tensors per written type, in first-seen order.
    public var typeCounts: [(type: GGMLType, count: Int)] = []
}

/// A Hugging Face folder planned as a GGUF file: keys, and tensors with their types and row sources.
public struct HuggingFaceConverter {
    /// Hugging Face classes → llama.cpp architectures puna convert writes.
    public static let architectures: [(hfClass: String, arch: String)] = [
        ("LlamaForCausalLM", "llama"), ("MistralForCausalLM", "llama"), ("Qwen2ForCausalLM", "qwen2"),
    ]

    struct PlannedTensor {
        let name: String
        /// GGUF order: row length first.
        let shape: [Int]
        /// The type in the converter's file (the f16 file for quantized outputs).
        let converterType: GGMLType
        /// The type written.
        var type: GGMLType
        let source: Int?            // index into sources; nil for a computed tensor
        let values: [Float]         // a computed tensor's values
        /// Source row of each output row (LLaMA's Q/K regrouping), nil when rows are in order.
        let rowOrder: [Int]?
        var byteCount: Int { type.rowBytes(shape[0])! * shape.dropFirst().reduce(1, *) }
    }

    public let folder: String
    public let architecture: String
    public let type: ConvertType
    /// A bitsandbytes source folder's scheme ("bnb-nf4-dq", "bnb-fp4", "bnb-int8"…), nil for F32/F16/BF16 ones.
    public private(set) var bitsAndBytes: String? = nil
    /// How many matrices were dequantized from bitsandbytes codes (and are re-encoded in `type`).
    public private(set) var dequantizedCount = 0
    /// README.md model card keys that were not written: YAML this reader does not take, or not text where
    /// text is wanted (and a README.md too large to read).
    public private(set) var modelCardSkipped: [String] = []
    public private(set) var keys: [(String, GGUFValue)] = []
    private(set) var tensors: [PlannedTensor] = []
    private let sources: [ConvertSourceTensor]

    /// Plan the conversion of `folder` to `type` (nil: the converter's default, bf16 when the first
    /// matrix is stored in bf16, else f16). A bitsandbytes folder (4-bit NF4/FP4 with or without double
    /// quantization, 8-bit LLM.int8) is dequantized exactly as bitsandbytes dequantizes it, then encoded
    /// in `type` like any f32 source. `sources` replaces the folder's safetensors (a quantized folder's
    /// decoded weights); its quantization_config is then the caller's business.
    public init(folder: String, type requested: ConvertType?, sources given: [ConvertSourceTensor]? = nil) throws(PunaError) {
        self.folder = folder
        let configPath = folder + "/config.json"
        guard puna_path_is_directory(folder) != 0 else { throw PunaError("\(folder): not a directory (puna convert takes a Hugging Face model folder)") }
        guard puna_path_exists(configPath) != 0 else { throw PunaError("\(folder): no config.json: not a Hugging Face model folder") }
        let config = try HuggingFaceFolder.readJSON(configPath)
        guard config.object != nil else { throw PunaError("\(configPath): not a JSON object") }
        let hfClass = config["architectures"]?[0]?.string ?? "?"
        guard let arch = HuggingFaceConverter.architectures.first(where: { $0.hfClass == hfClass })?.arch else {
            let known = HuggingFaceConverter.architectures.map { $0.hfClass }.joined(separator: ", ")
            throw PunaError("\(configPath): architecture '\(clipped(hfClass))' is not supported by puna convert (supported: \(known))")
        }
        architecture = arch
        var bnb: BitsAndBytesWeights? = nil
        if given == nil, let q = config["quantization_config"], !q.isNull {
            let method = q["quant_method"]?.string ?? "?"
            guard method == "bitsandbytes" else {
                throw PunaError("\(configPath): quantization_config (quant_method '\(clipped(method))') is not supported by puna convert: it reads F32/F16/BF16 and bitsandbytes (4-bit NF4/FP4, 8-bit) folders")
            }
            bnb = try BitsAndBytesWeights(config: q, file: configPath)
        }
        for key in ["num_local_experts", "num_experts"] where !(config[key]?.isNull ?? true) {
            throw PunaError("\(configPath): \(key) is set: mixture-of-experts models are not supported by puna convert")
        }
        var sources: [ConvertSourceTensor]
        if let given { sources = given } else { sources = try ConvertSourceTensor.safetensors(folder: folder, bitsAndBytes: bnb) }
        self.sources = sources
        bitsAndBytes = bnb?.typeName
        dequantizedCount = bnb == nil ? 0 : sources.filter { $0.storedType == nil }.count

        // The converter's default type: from the storage of the first matrix stored as floats (bf16 → bf16,
        // else f16). A bitsandbytes folder's quantized weights are skipped: its unquantized matrices
        // (embeddings, lm_head) carry the dtype the model was loaded in, so an NF4 base loaded in bf16
        // becomes bf16, one loaded in f16 or f32 becomes f16.
        var chosen = requested
        if chosen == nil {
            chosen = .f16
            if let firstMatrix = sources.first(where: { $0.shape.count >= 2 && $0.storedType != nil }), firstMatrix.storedType == .bf16 { chosen = .bf16 }
        }
        type = chosen!
        // Quantized files start from the converter's f16 file.
        let converterFileType: ConvertType = type.isQuantized ? .f16 : type

        let hp = try ConvertHyperparameters(config, arch: arch, file: configPath)
        try planTensors(hp: hp, converterType: converterFileType.baseType, file: configPath)
        let parameters = tensors.reduce(0) { $0 + $1.shape.reduce(1, *) }

        keys.append(("general.architecture", .string(arch)))
        keys.append(("general.type", .string("model")))
        let card = ModelCardMetadata(card: ModelCard(folder: folder), parameters: parameters)
        modelCardSkipped = card.skipped
        keys += try ConvertHyperparameters.generalKeys(folder: folder, config: config, parameters: parameters, card: card)
        keys += hp.keys(fileType: converterFileType.fileType)
        keys.append(("general.quantization_version", .uint32(2)))
        keys += try ConvertVocab(folder: folder, arch: arch, config: config, vocabSize: hp.vocabSize).keys

        if type.isQuantized { applyQuantizeRules(hp: hp) }
    }

    // MARK: tensors

    private mutating func planTensors(hp: ConvertHyperparameters, converterType: GGMLType, file: String) throws(PunaError) {
        if let factors = hp.llama3RopeFactors {
            tensors.append(PlannedTensor(name: "rope_freqs.weight", shape: [factors.count], converterType: .f32, type: .f32,
                                         source: nil, values: factors, rowOrder: nil))
        }
        var seen: Set<String> = []
        for (index, t) in sources.enumerated() {
            if t.name.hasSuffix(".rotary_emb.inv_freq") || t.name.hasSuffix(".attention.masked_bias") || t.name.hasSuffix(".attention.bias") { continue }
            guard let name = HuggingFaceFolder.ggufName(t.name), !containsText(name, "attn_q_norm"), !containsText(name, "attn_k_norm") else {
                throw PunaError("\(folder): tensor '\(clipped(t.name))' cannot be mapped to a \(architecture) GGUF tensor")
            }
            if let layer = HuggingFaceFolder.layerIndex(name), layer >= hp.blockCount {
                throw PunaError("\(folder): tensor '\(clipped(t.name))' is for layer \(layer), but config.json has \(hp.blockCount) layers")
            }
            guard (1...2).contains(t.shape.count), t.shape.allSatisfy({ $0 > 0 }) else {
                throw PunaError("\(folder): tensor '\(clipped(t.name))' has shape \(shapeText(t.shape)); puna convert expects 1 or 2 non-empty dimensions")
            }
            guard !seen.contains(name) else { throw PunaError("\(folder): two tensors map to '\(name)'") }
            seen.insert(name)
            let shape = Array(t.shape.reversed())
            // The converter's rule: 1-D tensors, norms and anything not named .weight stay F32.
            let isMatrix = shape.count >= 2 && !name.hasSuffix("_norm.weight") && name.hasSuffix(".weight")
            var tensorType = isMatrix ? converterType : GGMLType.f32
            if tensorType.rowBytes(shape[0]) == nil { tensorType = .f16 }   // the converter's fallback for odd rows
            var order: [Int]? = nil
            if architecture == "llama" {
                let isQuery = t.name.hasSuffix("q_proj.weight") || t.name.hasSuffix("q_proj.bias")
                let isKey = t.name.hasSuffix("k_proj.weight") || t.name.hasSuffix("k_proj.bias")
                if isQuery || isKey {
                    let heads = isQuery ? hp.headCount : hp.headCountKV
                    let rows = t.shape[0]
                    guard heads > 0, rows % (2 * heads) == 0 else {
                        throw PunaError("\(folder): tensor '\(clipped(t.name))' has \(rows) rows, not a whole number of \(heads) heads of even size")
                    }
                    order = HuggingFaceConverter.headPairOrder(rows: rows, heads: heads)
                }
            }
            tensors.append(PlannedTensor(name: name, shape: shape, converterType: tensorType, type: tensorType,
                                         source: index, values: [], rowOrder: order))
        }
        guard seen.contains("token_embd.weight") else { throw PunaError("\(folder): no model.embed_tokens.weight tensor") }
    }

    /// Output row r of a head of size d comes from source row (r odd ? d/2 : 0) + r/2 of that head:
    /// the two rotary halves are interleaved into pairs.
    @_spi(Testing) public static func headPairOrder(rows: Int, heads: Int) -> [Int] {
        let headSize = rows / heads, half = headSize / 2
        var order = [Int](repeating: 0, count: rows)
        for h in 0..<heads {
            for i in 0..<half {
                for j in 0..<2 { order[h * headSize + i * 2 + j] = h * headSize + j * half + i }
            }
        }
        return order
    }

    // MARK: llama-quantize's choices

    private mutating func applyQuantizeRules(hp: ConvertHyperparameters) {
        // llama.cpp's loader order: tensors outside layers first, then layer by layer; by name within.
        tensors.sort { a, b in
            let la = HuggingFaceFolder.layerIndex(a.name) ?? -1, lb = HuggingFaceFolder.layerIndex(b.name) ?? -1
            if la != lb { return la < lb }
            return a.name.utf8.lexicographicallyPrecedes(b.name.utf8)
        }
        let valueCount = tensors.filter { containsText($0.name, "attn_v.weight") }.count
        let tied = !tensors.contains { $0.name == "output.weight" }
        let isSeventyB = hp.blockCount == 80 && (architecture == "qwen2" || hp.headCount != hp.headCountKV)
        var valueIndex = 0, downIndex = 0
        let ftype = type.name
        func moreBits(_ i: Int, _ n: Int) -> Bool { i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2 }
        for i in tensors.indices {
            let t = tensors[i]
            let dims = t.shape.reversed().drop(while: { $0 == 1 }).count   // ggml_n_dims ignores trailing 1s
            guard dims >= 2, t.name.hasSuffix("weight"), !containsText(t.name, "_norm.weight") else { continue }
            var chosen = type.baseType
            if t.name == "output.weight" || (tied && t.name == "token_embd.weight") {
                if t.shape[0] % type.baseType.blockSize != 0 { chosen = .q8_0 }
                else if chosen != .q8_0 { chosen = .q6_K }
            } else if containsText(t.name, "attn_v.weight") {
                if (ftype == "q4_k_m" || ftype == "q5_k_m") && moreBits(valueIndex, valueCount) { chosen = .q6_K }
                else if ftype == "q4_k_s" && valueIndex < 4 { chosen = .q5_K }
                if isSeventyB && (chosen == .q4_K) { chosen = .q5_K }
                valueIndex += 1
            } else if containsText(t.name, "ffn_down") {
                let layers = hp.blockCount
                if ftype == "q4_k_m" || ftype == "q5_k_m" { if moreBits(downIndex, layers) { chosen = .q6_K } }
                else if ftype == "q4_k_s" && downIndex < layers / 8 { chosen = .q5_K }
                downIndex += 1
            }
            // Rows that are not whole blocks: the next type down, else F16.
            if t.shape[0] % chosen.blockSize != 0 {
                switch chosen {
                case .q4_K: chosen = .q5_0
                case .q5_K: chosen = .q5_1
                case .q6_K: chosen = .q8_0
                default: break
                }
                if t.shape[0] % chosen.blockSize != 0 { chosen = .f16 }
            }
            tensors[i].type = chosen
        }
        keys.removeAll { $0.0 == "general.quantization_version" || $0.0 == "general.file_type" }
        keys.append(("general.quantization_version", .uint32(2)))
        keys.append(("general.file_type", .uint32(type.fileType)))
    }

    // MARK: writing

    /// Write the GGUF file, one chunk of rows at a time, and read it back.
    public func write(to path: String) throws(PunaError) -> ConvertSummary {
        var summary = ConvertSummary()
        summary.architecture = architecture
        summary.type = type
        summary.tensorCount = tensors.count
        summary.parameterCount = tensors.reduce(0) { $0 + $1.shape.reduce(1, *) }
        for t in tensors {
            if let i = summary.typeCounts.firstIndex(where: { $0.type == t.type }) { summary.typeCounts[i].count += 1 }
            else { summary.typeCounts.append((t.type, 1)) }
        }
        var writer = GGUFWriter()
        for (key, value) in keys { writer.set(key, value) }
        let header = writer.serializeHeader(tensors: tensors.map { ($0.name, $0.shape, $0.type, $0.byteCount) })
        let alignment = writer.alignment

        let fd = puna_open_write(path, 0)
        guard fd >= 0 else { throw PunaError("\(path): cannot create the output file: \(String(cString: puna_strerror(-fd)))") }
        var written = 0
        func emit(_ bytes: UnsafeRawBufferPointer) throws(PunaError) {
            guard bytes.count > 0 else { return }
            let err = puna_write_all(fd, bytes.baseAddress, Int64(bytes.count))
            if err != 0 { throw PunaError("\(path): write failed: \(String(cString: puna_strerror(err)))") }
            written += bytes.count
        }
        do throws(PunaError) {
            try withBytes(header) { (b) throws(PunaError) in try emit(b) }
            let zeros = [UInt8](repeating: 0, count: alignment)
            for t in tensors {
                try writeData(t) { (chunk) throws(PunaError) in try emit(chunk) }
                let pad = (alignment - t.byteCount % alignment) % alignment
                try withBytes(Array(zeros[0..<pad])) { (z) throws(PunaError) in try emit(z) }
            }
        } catch {
            _ = puna_close(fd)
            throw error
        }
        if puna_close(fd) != 0 { throw PunaError("\(path): closing the output file failed") }
        summary.fileBytes = written
        // A file Puna cannot parse back must not be reported as written.
        _ = try GGUFFile(path: path)
        return summary
    }

    /// `body` on the bytes of `array` (withUnsafeBytes itself only rethrows untyped errors).
    private func withBytes(_ array: [UInt8], _ body: (UnsafeRawBufferPointer) throws(PunaError) -> Void) throws(PunaError) {
        var failure: PunaError? = nil
        array.withUnsafeBytes { b in
            do throws(PunaError) { try body(b) } catch { failure = error }
        }
        if let failure { throw failure }
    }

    /// One tensor's bytes: source rows (reordered) → f32 → the converter's type → the written type.
    private func writeData(_ t: PlannedTensor, emit: (UnsafeRawBufferPointer) throws(PunaError) -> Void) throws(PunaError) {
        let cols = t.shape[0]
        let rows = t.shape.dropFirst().reduce(1, *)
        if t.source == nil {
            var bytes: [UInt8] = []
            for v in t.values { var le = v.bitPattern.littleEndian; withUnsafeBytes(of: &le) { bytes.append(contentsOf: $0) } }
            try withBytes(bytes, emit)
            return
        }
        let source = sources[t.source!]
        guard let stageRowBytes = t.converterType.rowBytes(cols), let finalRowBytes = t.type.rowBytes(cols) else {
            throw PunaError("\(t.name): \(cols) weights per row are not whole \(t.type.name) blocks")
        }
        let sourceCols = source.rowLength
        guard source.rowCount * sourceCols == rows * cols else { throw PunaError("\(t.name): source shape does not match") }
        let chunk = max(1, min(rows, (1 << 18) / max(cols, 1)))
        let values = UnsafeMutablePointer<Float>.allocate(capacity: chunk * cols)
        defer { values.deallocate() }
        let stage = UnsafeMutableRawPointer.allocate(byteCount: max(chunk * stageRowBytes, 1), alignment: 64)
        defer { stage.deallocate() }
        let final = UnsafeMutableRawPointer.allocate(byteCount: max(chunk * finalRowBytes, 1), alignment: 64)
        defer { final.deallocate() }
        var first = 0
        while first < rows {
            let n = min(chunk, rows - first)
            if rows == 1, let order = t.rowOrder {
                // A 1-D tensor (a bias) is regrouped element by element.
                let raw = UnsafeMutablePointer<Float>.allocate(capacity: cols)
                defer { raw.deallocate() }
                try source.decodeRows(0, 1, raw)
                for i in 0..<cols { values[i] = raw[order[i]] }
            } else if let order = t.rowOrder {
                for i in 0..<n { try source.decodeRows(order[first + i], 1, values + i * cols) }
            } else {
                try source.decodeRows(first, n, values)
            }
            try t.converterType.encode(values, into: stage, count: n * cols)
            if t.type == t.converterType {
                try emit(UnsafeRawBufferPointer(start: stage, count: n * stageRowBytes))
            } else {
                // llama-quantize reads the converter's values back and quantizes them row by row.
                try t.converterType.decode(stage, into: values, count: n * cols)
                for i in 0..<n { try t.type.encode(values + i * cols, into: final + i * finalRowBytes, count: cols) }
                try emit(UnsafeRawBufferPointer(start: final, count: n * finalRowBytes))
            }
            first += n
        }
    }
}
