import CPuna

// LoRA adapters: y = W·x + Σᵢ sᵢ·(αᵢ/rᵢ)·Bᵢ(Aᵢ·x), applied per token on top of the untouched,
// memory-mapped base weights (see Merge.swift for folding them into the weights instead).
//
// Two file formats:
// - a PEFT folder: adapter_config.json + adapter_model.safetensors, tensors named
//   `base_model.model.model.layers.N.self_attn.q_proj.lora_A[.default].weight` (A: r×in, B: out×r,
//   PyTorch order). convert_hf_to_gguf.py reorders the rows of attn_q/attn_k per head (GGUF row 2i
//   = HF row i, row 2i+1 = HF row i+d/2) so that RoPE rotates adjacent pairs; B's rows are outputs
//   of those matrices and get the same reordering (applied when the delta is added, A is untouched).
// - a GGUF LoRA from llama.cpp's convert_lora_to_gguf.py: `general.type = adapter`,
//   `adapter.type = lora`, `adapter.lora.alpha`, tensors `<base name>.lora_a` (GGUF shape [in, r])
//   and `.lora_b` ([r, out], rows already reordered by the converter). Its token_embd.lora_a is
//   stored transposed ([r, vocab]: one row of r per token).

/// One factor matrix where it lies (mapped, never copied): `rows` × `cols` of a type that
/// puna_matmul takes, row-major.
struct LoRAMatrix {
    let type: GGMLType
    let rows: Int
    let cols: Int
    let data: UnsafeRawPointer

    var rowBytes: Int { (cols / max(type.blockSize, 1)) * type.bytesPerBlock }
    var byteCount: Int { rowBytes * rows }

    /// Row `r` as f32 into `out` (cols floats).
    func decodeRow(_ r: Int, into out: UnsafeMutablePointer<Float>) {
        try? type.decode(data + r * rowBytes, into: out, count: cols)
    }

    /// Element (r, c); only for element-wise types (block size 1).
    func element(_ r: Int, _ c: Int) -> Float {
        var v: Float = 0
        try? type.decode(data + (r * cols + c) * type.bytesPerBlock, into: &v, count: 1)
        return v
    }
}

/// The two factors of one adapter for one base matrix.
@_spi(Testing) public final class LoRAWeights {
    enum Kind { case linear, embedding }

    /// GGUF name of the base tensor ("blk.0.attn_q.weight", "output.weight", "token_embd.weight").
    let target: String
    let kind: Kind
    /// linear: A is rank × in. embedding: A holds rank numbers per token, either as columns
    /// (PEFT's lora_embedding_A, rank × vocab) or as rows (GGUF, vocab × rank: `aRowPerToken`).
    let a: LoRAMatrix
    let aRowPerToken: Bool
    /// out × rank (embedding: n_embd × rank).
    let b: LoRAMatrix
    let rank: Int
    /// α/r (α/√r with rsLoRA) for this pair.
    let scale: Float
    /// B's row i updates base row outputRows[i] (Q/K rotary reordering, BLOOM's QKV regrouping); nil = same row.
    @_spi(Testing) public let outputRows: [Int]?
    /// Names of the two tensors in the adapter file, for messages.
    let sourceA: String
    let sourceB: String
    /// The mapped file B lies in (nil when B was copied out of it), whose pages of B are dropped
    /// once the transposed copy exists.
    let bFile: MappedFile?
    /// B transposed (B's type, rows in the base's row order, in puna_lora_pack_bt's tiles of 64
    /// outputs): owned, built by `prepareTransposedB` for the CPU kernels (puna_lora.h). `b`
    /// itself stays mapped for the merge and the Vulkan upload.
    private(set) var transposedB: UnsafeMutableRawPointer? = nil

    init(target: String, kind: Kind, a: LoRAMatrix, aRowPerToken: Bool, b: LoRAMatrix, rank: Int, scale: Float,
         outputRows: [Int]?, sourceA: String, sourceB: String, bFile: MappedFile? = nil) {
        self.target = target
        self.kind = kind
        self.a = a
        self.aRowPerToken = aRowPerToken
        self.b = b
        self.rank = rank
        self.scale = scale
        self.outputRows = outputRows
        self.sourceA = sourceA
        self.sourceB = sourceB
        self.bFile = bFile
    }

    deinit { transposedB?.deallocate() }

    /// Whether puna_lora_apply computes this pair (a linear pair with F32/F16/BF16 factors; others,
    /// e.g. quantized factors of a GGUF LoRA, go through puna_matmul).
    var usesLoRAKernel: Bool {
        kind == .linear && puna_lora_supports(Int32(a.type.rawValue)) != 0 && puna_lora_supports(Int32(b.type.rawValue)) != 0
    }

    /// Build Bᵀ once (no-op when built or when the kernel does not take this pair), then drop B's
    /// mapped pages from this process: they are read again only by a merge or a GPU upload.
    func prepareTransposedB() {
        guard transposedB == nil, usesLoRAKernel else { return }
        let type = Int32(b.type.rawValue)
        let bytes = Int(puna_lora_bt_bytes(type, Int64(b.rows), Int64(rank)))
        let copy = UnsafeMutableRawPointer.allocate(byteCount: max(bytes, 1), alignment: 64)
        let status: Int32
        if let order = outputRows {
            status = order.withUnsafeBufferPointer { p in
                puna_lora_pack_bt(type, b.data, Int64(b.rows), Int64(rank), UnsafeRawPointer(p.baseAddress!).assumingMemoryBound(to: Int64.self), copy)
            }
        } else {
            status = puna_lora_pack_bt(type, b.data, Int64(b.rows), Int64(rank), nil, copy)
        }
        guard status == 0 else { copy.deallocate(); return }  // cannot happen: rows were checked at load
        transposedB = copy
        if let file = bFile, let base = file.baseAddress {
            let offset = b.data - base
            if offset >= 0 && offset + b.byteCount <= file.count { file.advise(offset: offset, count: b.byteCount, .dontNeed) }
        }
    }

    /// Bytes of the transposed copy (tiles padded to 64 outputs).
    var transposedBytes: Int { usesLoRAKernel ? Int(puna_lora_bt_bytes(Int32(b.type.rawValue), Int64(b.rows), Int64(rank))) : 0 }

    /// The factors as puna_lora_apply takes them (after prepareTransposedB).
    var kernelFactors: puna_lora_factors {
        puna_lora_factors(a_type: Int32(a.type.rawValue), bt_type: Int32(b.type.rawValue), a: a.data,
                          bt: UnsafeRawPointer(transposedB), rank: Int64(rank), cols: Int64(a.cols), outputs: Int64(b.rows))
    }

    /// Rows of the base matrix this pair updates (B's rows).
    var outputCount: Int { b.rows }

    /// Embedding pairs: the rank numbers of token `t` into out.
    func embeddingCoefficients(token t: Int, into out: UnsafeMutablePointer<Float>) {
        if aRowPerToken {
            a.decodeRow(t, into: out)
        } else {
            for k in 0..<rank { out[k] = a.element(k, t) }
        }
    }
}

/// A LoRA adapter loaded for one base model. Its tensors stay in the mapped adapter file.
public final class LoRAAdapter {
    public enum Format { case peft, gguf }

    /// The folder or file name.
    public let name: String
    public let path: String
    public let format: Format
    /// The adapter's rank (PEFT: `r`; GGUF: the largest rank of its pairs).
    public let rank: Int
    public let alpha: Float
    /// α/r, or α/√r with rsLoRA (GGUF: α/r, or 1 when α is 0, as llama.cpp does).
    public let baseScale: Float
    public let usesRSLoRA: Bool
    /// `target_modules` as the config declares them (GGUF: derived from the tensors).
    public let targetModules: [String]
    /// GGUF names of the base tensors the adapter changes, in model order.
    public let targets: [String]
    /// Bytes of the A and B tensors used.
    public let tensorBytes: Int
    /// Things the user should know (unknown target modules, ignored settings).
    public let warnings: [String]
    /// Whether the adapter was checked against a base model (shapes, layers, Q/K reordering).
    public let isBound: Bool

    @_spi(Testing) public let weights: [String: LoRAWeights]
    // The mapped files the factors point into, kept alive with the adapter.
    private let safetensors: SafetensorsFile?
    private let ggufFile: GGUFFile?
    // Factors copied out of the mapping because they were misaligned for their type (rare).
    private let ownedCopies: [UnsafeMutableRawPointer]

    deinit { for p in ownedCopies { p.deallocate() } }

    /// Get the adapter ready to be applied per token on the CPU: B of every linear pair transposed
    /// into owned memory (LoRAWeights.prepareTransposedB). Setting `activeAdapters` does it; sets
    /// given per row (batching) are prepared on first use.
    public func prepareForUnmergedUse() {
        for w in weights.values { w.prepareTransposedB() }
    }

    /// Bytes of the transposed copies of B built so far (owned memory).
    public var transposedBytes: Int {
        var n = 0
        for w in weights.values where w.transposedB != nil { n += w.transposedBytes }
        return n
    }

    /// Load an adapter (a PEFT folder, its adapter_model.safetensors, or a GGUF LoRA file) for
    /// `model`: every factor's shape is checked against the base matrix it updates.
    public static func load(path: String, for model: LanguageModel) throws(PunaError) -> LoRAAdapter {
        try LoRAAdapter(path: path, base: model)
    }

    /// Read an adapter without a base model (for `puna info`): no shape checks against a base and no
    /// Q/K reordering, so the result can describe the adapter but not run.
    public static func inspect(path: String) throws(PunaError) -> LoRAAdapter {
        try LoRAAdapter(path: path, base: nil)
    }

    /// The base tensor stem a target module maps to, e.g. q_proj → attn_q (every architecture's
    /// modules: Architecture.peftModules).
    static let moduleTargets: [String: String] = {
        var map: [String: String] = [:]
        for m in Architecture.allPEFTModules { map[m.module] = m.stem }
        return map
    }()
    static let knownModules: [String] = Architecture.allPEFTModules.map { $0.module } + ["lm_head", "embed_tokens"]
    static let ggufBlockTargets = LayerTensor.matrices.map { $0.stem }

    private init(path: String, base: LanguageModel?) throws(PunaError) {
        let parsed: ParsedAdapter
        if puna_file_exists(path) == 0 {
            throw PunaError("\(path): no such file or folder")
        }
        if puna_file_exists(path + "/.") != 0 {
            parsed = try LoRAAdapter.parsePEFT(folder: path, safetensorsPath: nil)
        } else if path.hasSuffix(".safetensors") {
            parsed = try LoRAAdapter.parsePEFT(folder: directoryOf(path), safetensorsPath: path)
        } else {
            let file = try MappedFile(path: path)
            let bytes = file.bytes
            if bytes.count >= 4, bytes.loadUnaligned(as: UInt32.self) == UInt32(littleEndian: 0x4655_4747) {
                parsed = try LoRAAdapter.parseGGUF(GGUFFile(file: file))
            } else if path.hasSuffix(".bin") || path.hasSuffix(".pt") || path.hasSuffix(".pth")
                        || (bytes.count >= 2 && (bytes[0] == 0x80 || (bytes[0] == 0x50 && bytes[1] == 0x4B))) {
                throw LoRAAdapter.pickleError(path)
            } else {
                throw PunaError("\(path): not a LoRA adapter (expected a PEFT folder with adapter_config.json and adapter_model.safetensors, or a GGUF LoRA from convert_lora_to_gguf.py)")
            }
        }

        // Target modules the base's architecture (or, unbound, any architecture) does not have.
        var warnings = parsed.warnings
        if parsed.format == .peft {
            let known = base.map { $0.architecture.peftModules.map { $0.module } + ["lm_head", "embed_tokens"] } ?? LoRAAdapter.knownModules
            let isPattern = parsed.targetModules.count == 1 && parsed.targetModules[0].contains(where: { "^$*+?()[]{}|\\".contains($0) })
            let unknown = parsed.targetModules.filter { $0 != "all-linear" && !known.contains($0) }
            if !unknown.isEmpty && !isPattern {
                let owner = base.map { "the base's architecture (\($0.config.architecture)) does not have" } ?? "no architecture Puna runs has"
                warnings.append("target modules that \(owner): \(unknown.joined(separator: ", ")) (their tensors are ignored)")
            }
        }
        if let model = base, let adapterArch = parsed.gguf?.architecture, adapterArch != model.config.architecture {
            throw PunaError("\(path): adapter for architecture '\(clipped(adapterArch))' but the base model \(model.gguf.path) is '\(model.config.architecture)'")
        }
        // Bind to the base: shapes, layer indices, Q/K row order.
        var weights: [String: LoRAWeights] = [:]
        var bytes = 0
        var owned: [UnsafeMutableRawPointer] = []
        var maxRank = 0
        for raw in parsed.pairs {
            let label = "\(path): "
            let rank = raw.kind == .embedding && raw.aRowPerToken ? raw.a.cols : raw.a.rows
            guard raw.b.cols == rank else {
                throw PunaError(label + "rank mismatch: '\(raw.aName)' has rank \(rank) (shape \(raw.aShape)) but '\(raw.bName)' has rank \(raw.b.cols) (shape \(raw.bShape))")
            }
            guard rank > 0 else { throw PunaError(label + "'\(raw.aName)' has rank 0") }
            if let declared = raw.declaredRank, declared != rank {
                throw PunaError(label + "rank mismatch: adapter_config.json gives r = \(declared) for this module but '\(raw.aName)' has rank \(rank) (shape \(raw.aShape))")
            }
            maxRank = max(maxRank, rank)
            var outputRows: [Int]? = nil
            if let model = base {
                guard let shape = model.adapterTargetShape(raw.target) else {
                    throw PunaError(label + "'\(raw.aName)' updates '\(raw.target)', which the base model \(model.gguf.path) does not have (it has \(model.config.blockCount) layers)")
                }
                let (outRows, inCols) = shape
                let wantA = raw.kind == .embedding && raw.aRowPerToken ? (inCols, rank) : (rank, inCols)
                let wantB = (outRows, rank)
                // Shapes in the file's own order: PyTorch lists rows first, GGUF columns first.
                func text(_ rc: (Int, Int)) -> String {
                    parsed.format == .peft ? shapeText([rc.0, rc.1]) : shapeText([rc.1, rc.0])
                }
                let baseText = raw.kind == .embedding
                    ? "base tensor '\(raw.target)' (\(inCols) tokens × \(outRows))"
                    : "base tensor '\(raw.target)' (\(outRows) outputs × \(inCols) inputs)"
                guard raw.a.rows == wantA.0, raw.a.cols == wantA.1 else {
                    throw PunaError(label + "shape mismatch: '\(raw.aName)' has shape \(raw.aShape) but \(baseText) needs \(text(wantA)): is this adapter for another base model?")
                }
                guard raw.b.rows == wantB.0 else {
                    throw PunaError(label + "shape mismatch: '\(raw.bName)' has shape \(raw.bShape) but \(baseText) needs \(text(wantB)): is this adapter for another base model?")
                }
                if parsed.format == .peft, raw.kind == .linear, let heads = model.rotaryHeads(raw.target) {
                    guard outRows % heads == 0, (outRows / heads) % 2 == 0 else {
                        throw PunaError(label + "'\(raw.target)' has \(outRows) rows, not whole heads of even size for \(heads) heads")
                    }
                    outputRows = rotaryRowOrder(rows: outRows, heads: heads)
                } else if parsed.format == .gguf, raw.kind == .linear, model.gguf.isHuggingFaceFolder,
                          model.architecture.reordersQueryKeyRows,
                          let heads = raw.target.hasSuffix(".attn_q.weight") ? model.config.headCount
                                    : raw.target.hasSuffix(".attn_k.weight") ? model.config.headCountKV : nil {
                    // A GGUF adapter's Q/K rows are in the converter's order; a Hugging Face folder's base is not.
                    guard outRows % heads == 0, (outRows / heads) % 2 == 0 else {
                        throw PunaError(label + "'\(raw.target)' has \(outRows) rows, not whole heads of even size for \(heads) heads")
                    }
                    let forward = rotaryRowOrder(rows: outRows, heads: heads)
                    var inverse = [Int](repeating: 0, count: outRows)
                    for (hf, gguf) in forward.enumerated() { inverse[gguf] = hf }
                    outputRows = inverse
                } else if parsed.format == .peft, raw.kind == .linear, model.architecture.regroupsPerHeadQKV,
                          raw.target.hasSuffix("." + LayerTensor.fusedQKV.name) {
                    let c = model.config
                    guard outRows == 3 * c.headCount * c.headDimension else {
                        throw PunaError(label + "'\(raw.target)' has \(outRows) rows, not Q, K and V of \(c.headCount) heads")
                    }
                    outputRows = perHeadQKVRowOrder(heads: c.headCount, headDimension: c.headDimension)
                }
            }
            var a = raw.a, b = raw.b
            for m in [0, 1] {
                let matrix = m == 0 ? a : b
                let alignment = matrix.type.isQuantized ? 1 : matrix.type.bytesPerBlock
                guard Int(bitPattern: matrix.data) % max(alignment, 1) != 0 else { continue }
                let copy = UnsafeMutableRawPointer.allocate(byteCount: max(matrix.byteCount, 1), alignment: 16)
                copy.copyMemory(from: matrix.data, byteCount: matrix.byteCount)
                owned.append(copy)
                let aligned = LoRAMatrix(type: matrix.type, rows: matrix.rows, cols: matrix.cols, data: UnsafeRawPointer(copy))
                if m == 0 { a = aligned } else { b = aligned }
            }
            let scale: Float
            switch parsed.format {
            case .peft:
                let alpha = raw.alpha ?? parsed.alpha
                scale = parsed.rsLoRA ? alpha / Float(rank).squareRoot() : alpha / Float(rank)
            case .gguf:
                scale = parsed.alpha == 0 ? 1 : parsed.alpha / Float(rank)
            }
            if weights[raw.target] != nil {
                throw PunaError(label + "two pairs of tensors update '\(raw.target)' (one is '\(raw.aName)')")
            }
            weights[raw.target] = LoRAWeights(target: raw.target, kind: raw.kind, a: a, aRowPerToken: raw.aRowPerToken, b: b,
                                              rank: rank, scale: scale, outputRows: outputRows,
                                              sourceA: raw.aName, sourceB: raw.bName,
                                              bFile: parsed.safetensors?.file ?? parsed.gguf?.file)
            bytes += raw.a.byteCount + raw.b.byteCount
        }
        if let model = base {
            for saved in parsed.savedBaseLayers {
                guard let m = model.matrix(named: saved.target) else { continue }
                guard saved.shape == [m.rows, m.cols] else {
                    throw PunaError("\(path): '\(saved.name)' has shape \(shapeText(saved.shape)) but the base model's '\(saved.target)' is \(shapeText([m.rows, m.cols])): the fine-tune changed the vocabulary, which Puna does not support")
                }
            }
        }
        guard !weights.isEmpty else {
            var s = "\(path): no LoRA weights for any matrix of a LLaMA model"
            if !parsed.warnings.isEmpty { s += " (" + parsed.warnings.joined(separator: "; ") + ")" }
            throw PunaError(s)
        }

        let rank = parsed.format == .peft ? parsed.rank : maxRank
        self.name = baseName(path)
        self.path = path
        self.format = parsed.format
        self.rank = rank
        self.alpha = parsed.alpha
        self.usesRSLoRA = parsed.rsLoRA
        switch parsed.format {
        case .peft: baseScale = parsed.rsLoRA ? parsed.alpha / Float(rank).squareRoot() : parsed.alpha / Float(rank)
        case .gguf: baseScale = parsed.alpha == 0 ? 1 : parsed.alpha / Float(rank)
        }
        self.targetModules = parsed.targetModules
        self.targets = weights.keys.sorted { LoRAAdapter.targetOrder($0) < LoRAAdapter.targetOrder($1) }
        self.tensorBytes = bytes
        self.warnings = warnings
        self.isBound = base != nil
        self.weights = weights
        self.safetensors = parsed.safetensors
        self.ggufFile = parsed.gguf
        self.ownedCopies = owned
    }

    /// Sort key that puts targets in model order: embedding, layers 0..n (q k v o gate up down), output.
    static func targetOrder(_ target: String) -> (Int, Int, Int) {
        if target == "token_embd.weight" { return (0, 0, 0) }
        if target == "output.weight" { return (2, 0, 0) }
        let parts = target.split(separator: ".")
        if parts.count == 3, parts[0] == "blk", let layer = Int(parts[1]) {
            let k = ggufBlockTargets.firstIndex(of: String(parts[2])) ?? ggufBlockTargets.count
            return (1, layer, k)
        }
        return (3, 0, 0)
    }

    static func pickleError(_ path: String) -> PunaError {
        PunaError("\(path): a PyTorch pickle (adapter_model.bin), which Puna does not read (unpickling can run code). Convert it once to safetensors, next to adapter_config.json:\n"
                  + "  python -c \"import torch; from safetensors.torch import save_file; "
                  + "save_file({k: v.contiguous() for k, v in torch.load('adapter_model.bin', map_location='cpu').items()}, 'adapter_model.safetensors')\"")
    }

    // MARK: parsing

    /// One A/B pair as found in the file, before the base model is consulted.
    struct RawPair {
        var target: String
        var kind: LoRAWeights.Kind
        var a: LoRAMatrix
        var b: LoRAMatrix
        var aRowPerToken: Bool
        var aName: String
        var bName: String
        var aShape: String
        var bShape: String
        var alpha: Float?          // from alpha_pattern
        var declaredRank: Int?     // what the config says this module's rank is
    }

    struct ParsedAdapter {
        var format: Format
        var rank: Int
        var alpha: Float
        var rsLoRA: Bool
        var targetModules: [String]
        var pairs: [RawPair]
        var warnings: [String]
        var safetensors: SafetensorsFile?
        var gguf: GGUFFile?
        /// Whole embedding / LM head weights the file also holds (PEFT's save_embedding_layers).
        var savedBaseLayers: [(name: String, target: String, shape: [Int])] = []
    }

    private static func parsePEFT(folder: String, safetensorsPath: String?) throws(PunaError) -> ParsedAdapter {
        let configPath = folder + "/adapter_config.json"
        guard puna_file_exists(configPath) != 0 else {
            throw PunaError("\(folder): no adapter_config.json (a PEFT adapter folder holds adapter_config.json and adapter_model.safetensors)")
        }
        let configFile = try MappedFile(path: configPath)
        let config: JSONValue
        do throws(PunaError) {
            config = try JSONValue.parse(bytes: UnsafeBufferPointer(start: configFile.baseAddress?.assumingMemoryBound(to: UInt8.self), count: configFile.count))
        } catch {
            throw PunaError("\(configPath): \(error.message)")
        }
        guard config.object != nil else { throw PunaError("\(configPath): not a JSON object") }
        var warnings: [String] = []

        if let type = config["peft_type"] {
            guard let t = type.string, t.uppercased() == "LORA" else {
                throw PunaError("\(configPath): peft_type is \(type.string.map { "'\($0)'" } ?? "not a string"); Puna runs LoRA adapters only")
            }
        }
        guard let rValue = config["r"] else { throw PunaError("\(configPath): missing key 'r' (the LoRA rank)") }
        guard let rank = checkedRank(rValue) else {
            throw PunaError("\(configPath): 'r' must be a whole number from 1 to \(maxRank), found \(jsonText(rValue))")
        }
        guard let alphaValue = config["lora_alpha"] else { throw PunaError("\(configPath): missing key 'lora_alpha'") }
        guard let alpha = checkedAlpha(alphaValue.double) else {
            throw PunaError("\(configPath): 'lora_alpha' must be a number of magnitude at most \(Int(maxAlpha)), found \(jsonText(alphaValue))")
        }
        guard let targetsValue = config["target_modules"] else {
            throw PunaError("\(configPath): missing key 'target_modules'")
        }
        var targetModules: [String] = []
        if let s = targetsValue.string {
            targetModules = [s]
        } else if let list = targetsValue.array {
            for v in list {
                guard let s = v.string else { throw PunaError("\(configPath): target_modules must be a list of strings") }
                targetModules.append(s)
            }
        } else if !targetsValue.isNull {
            throw PunaError("\(configPath): target_modules must be a list of strings or a string")
        }
        func flag(_ key: String) throws(PunaError) -> Bool {
            guard let v = config[key], !v.isNull else { return false }
            guard let b = v.bool else { throw PunaError("\(configPath): '\(key)' must be true or false") }
            return b
        }
        let rsLoRA = try flag("use_rslora")
        if try flag("use_dora") {
            throw PunaError("\(configPath): use_dora is true: DoRA adapters are not supported (merge it with PEFT's merge_and_unload() and convert the merged model)")
        }
        if try flag("fan_in_fan_out") {
            // PEFT resets it to false for torch.nn.Linear layers (all of LLaMA's): A and B keep their shapes.
            warnings.append("fan_in_fan_out is true in adapter_config.json; ignored for LLaMA's linear layers, as PEFT does")
        }
        if let saved = config["modules_to_save"]?.array, !saved.isEmpty {
            var names: [String] = []
            for v in saved { names.append(v.string ?? "?") }
            throw PunaError("\(configPath): modules_to_save [\(names.joined(separator: ", "))]: the adapter replaces whole modules, which Puna does not support (merge it with PEFT's merge_and_unload() and convert the merged model)")
        }
        if let bias = config["bias"]?.string, bias != "none" {
            warnings.append("bias is '\(bias)'; LLaMA's layers have no biases, so it changes nothing")
        }
        if targetModules.count == 1, targetModules[0] != "all-linear", !knownModules.contains(targetModules[0]),
           targetModules[0].contains(where: { "^$*+?()[]{}|\\".contains($0) }) {
            warnings.append("target_modules is a regular expression; the targets are taken from the tensors present")
        }
        let rankPattern = try patternTable(config, "rank_pattern", configPath, "a whole number from 1 to \(maxRank)") { checkedRank($0).map { Double($0) } }
        let alphaPattern = try patternTable(config, "alpha_pattern", configPath, "a number of magnitude at most \(Int(maxAlpha))") { checkedAlpha($0.double) }

        let tensorsPath = safetensorsPath ?? folder + "/adapter_model.safetensors"
        if safetensorsPath == nil && puna_file_exists(tensorsPath) == 0 {
            if puna_file_exists(folder + "/adapter_model.bin") != 0 { throw pickleError(folder + "/adapter_model.bin") }
            throw PunaError("\(folder): no adapter_model.safetensors")
        }
        let file = try SafetensorsFile(path: tensorsPath)

        // Collect A and B per module.
        struct Half { var info: SafetensorsTensorInfo; var embedding: Bool }
        var halves: [String: (a: Half?, b: Half?)] = [:]
        var moduleOrder: [String] = []
        var unknownModules: [String] = []
        var strays: [String] = []
        var savedBaseLayers: [String] = []
        for t in file.tensors {
            let parts = t.name.split(separator: ".", omittingEmptySubsequences: false).map { String($0) }
            // PEFT saves the embedding and LM head whole next to their LoRA factors
            // (save_embedding_layers) for fine-tunes that resized the vocabulary; the base model's
            // own are used, after a shape check (as llama.cpp's converter drops them too).
            if t.name.hasSuffix(".base_layer.weight"), let leaf = parts.dropLast(2).last, leaf == "embed_tokens" || leaf == "lm_head" {
                savedBaseLayers.append(t.name)
                continue
            }
            guard let j = parts.firstIndex(where: { $0 == "lora_A" || $0 == "lora_B" || $0 == "lora_embedding_A" || $0 == "lora_embedding_B" }) else {
                strays.append(t.name)
                continue
            }
            let tail = Array(parts[(j + 1)...])
            guard tail.count <= 2, tail.count < 2 || tail[1] == "weight" else { strays.append(t.name); continue }
            let module = parts[0..<j].joined(separator: ".")
            let isA = parts[j].hasSuffix("A")
            let isEmbedding = parts[j].hasPrefix("lora_embedding")
            if halves[module] == nil { moduleOrder.append(module) }
            var entry = halves[module] ?? (nil, nil)
            if isA {
                if entry.a != nil { throw PunaError("\(tensorsPath): two lora_A tensors for module '\(module)'") }
                entry.a = Half(info: t, embedding: isEmbedding)
            } else {
                if entry.b != nil { throw PunaError("\(tensorsPath): two lora_B tensors for module '\(module)'") }
                entry.b = Half(info: t, embedding: isEmbedding)
            }
            halves[module] = entry
        }
        if !strays.isEmpty {
            let shown = strays.prefix(3).joined(separator: "', '")
            var why = "tensors that are not LoRA factors: '\(shown)'"
            if strays.count > 3 { why += " and \(strays.count - 3) more" }
            if strays.contains(where: { containsText($0, "lora_magnitude_vector") }) { why += " (DoRA magnitudes: DoRA is not supported)" }
            else if strays.contains(where: { $0.hasSuffix(".bias") }) { why += " (biases: LoRA biases are not supported)" }
            else { why += " (modules saved whole are not supported)" }
            throw PunaError("\(tensorsPath): \(why)")
        }

        var pairs: [RawPair] = []
        for module in moduleOrder {
            let entry = halves[module]!
            guard let a = entry.a else { throw PunaError("\(tensorsPath): module '\(module)' has lora_B but no lora_A") }
            guard let b = entry.b else { throw PunaError("\(tensorsPath): module '\(module)' has lora_A but no lora_B") }
            let components = module.split(separator: ".").map { String($0) }
            let leaf = components.last ?? ""
            var target: String? = nil
            // "model.layers.N..." (LLaMA, Qwen, Phi, Gemma) or "transformer.h.N..." (BLOOM)
            let li = components.indices.first { i in (components[i] == "layers" || components[i] == "h") && i + 1 < components.count && Int(components[i + 1]) != nil }
            if let li, let layer = Int(components[li + 1]) {
                if let t = moduleTargets[leaf] { target = "blk.\(layer).\(t).weight" }
            } else if leaf == "lm_head" {
                target = "output.weight"
            } else if leaf == "embed_tokens" {
                target = "token_embd.weight"
            }
            guard let target else {
                if !unknownModules.contains(leaf) { unknownModules.append(leaf) }
                continue
            }
            let embedding = target == "token_embd.weight"
            guard a.embedding == embedding, b.embedding == embedding else {
                throw PunaError("\(tensorsPath): module '\(module)' mixes lora_embedding and lora tensors")
            }
            var matrices: [LoRAMatrix] = []
            for half in [a.info, b.info] {
                guard let type = half.ggmlType else {
                    throw PunaError("\(tensorsPath): tensor '\(half.name)' has dtype \(half.dtype); LoRA factors must be F32, F16 or BF16")
                }
                guard half.shape.count == 2 else {
                    throw PunaError("\(tensorsPath): tensor '\(half.name)' has shape \(shapeText(half.shape)), expected 2 dimensions")
                }
                matrices.append(LoRAMatrix(type: type, rows: half.shape[0], cols: half.shape[1], data: file.data(of: half).baseAddress ?? UnsafeRawPointer(bitPattern: 16)!))
            }
            // Patterns are matched against the module path without PEFT's wrapper prefix.
            var key = module
            if key.hasPrefix("base_model.model.") { key = String(key.dropFirst("base_model.model.".count)) }
            pairs.append(RawPair(target: target, kind: embedding ? .embedding : .linear, a: matrices[0], b: matrices[1],
                                 aRowPerToken: false, aName: a.info.name, bName: b.info.name,
                                 aShape: shapeText(a.info.shape), bShape: shapeText(b.info.shape),
                                 alpha: lookupPattern(alphaPattern, key).map { Float($0) },
                                 declaredRank: lookupPattern(rankPattern, key).map { Int($0) } ?? rank))
        }
        if !unknownModules.isEmpty {
            warnings.append("ignored LoRA tensors of modules that no architecture Puna runs has: \(unknownModules.joined(separator: ", "))")
        }
        var baseLayerShapes: [(name: String, target: String, shape: [Int])] = []
        for name in savedBaseLayers {
            let info = file.tensorInfo(name)!
            baseLayerShapes.append((name, containsText(name, "lm_head") ? "output.weight" : "token_embd.weight", info.shape))
        }
        return ParsedAdapter(format: .peft, rank: rank, alpha: Float(alpha), rsLoRA: rsLoRA, targetModules: targetModules,
                             pairs: pairs, warnings: warnings, safetensors: file, gguf: nil, savedBaseLayers: baseLayerShapes)
    }

    /// The largest rank accepted from a config: far above any real adapter, and small enough that
    /// rank × columns arithmetic cannot overflow.
    static let maxRank = 1 << 16
    /// The largest |alpha| accepted: real adapters use a few to a few hundred; beyond this alpha/r·B·A
    /// is no longer a fine-tune but overflow waiting to happen (1e308 became +inf as a Float).
    static let maxAlpha: Double = 1e6

    /// A rank from JSON: an exact whole number in 1...maxRank (8.7 or 1e19 are refused, not truncated or trapped on).
    private static func checkedRank(_ value: JSONValue) -> Int? {
        guard let r = value.int, r >= 1, r <= maxRank else { return nil }
        return r
    }

    /// An alpha that is finite and at most maxAlpha in magnitude, so that it and alpha/r stay finite Floats.
    static func checkedAlpha(_ value: Double?) -> Double? {
        guard let a = value, a.isFinite, a.magnitude <= maxAlpha else { return nil }
        return a
    }

    /// A JSON value as text for a message, cut to a readable length.
    private static func jsonText(_ value: JSONValue) -> String {
        if let t = value.numberText { return clipped(t) }
        if let s = value.string { return "'\(clipped(s))'" }
        return value.isNull ? "null" : "a non-number"
    }

    /// rank_pattern / alpha_pattern: module name (or suffix) → number. PEFT matches the keys as regular
    /// expressions; Puna takes plain names, which cover what PEFT itself writes.
    private static func patternTable(_ config: JSONValue, _ key: String, _ path: String, _ what: String,
                                     _ check: (JSONValue) -> Double?) throws(PunaError) -> [(String, Double)] {
        guard let value = config[key], !value.isNull else { return [] }
        guard let members = value.object else { throw PunaError("\(path): '\(key)' must be an object") }
        var table: [(String, Double)] = []
        for (k, v) in members {
            guard let d = check(v), d > 0 else {
                throw PunaError("\(path): \(key) entry '\(clipped(k))' must be \(what) above 0, found \(jsonText(v))")
            }
            if k.contains(where: { "^$*+?()[]{}|\\".contains($0) }) {
                throw PunaError("\(path): \(key) entry '\(clipped(k))' is a regular expression, which Puna does not evaluate (use plain module names)")
            }
            table.append((k, d))
        }
        return table
    }

    private static func lookupPattern(_ table: [(String, Double)], _ module: String) -> Double? {
        for (k, v) in table where module == k || module.hasSuffix("." + k) { return v }
        return nil
    }

    private static func parseGGUF(_ gguf: GGUFFile) throws(PunaError) -> ParsedAdapter {
        let path = gguf.path
        guard let type = gguf.string("general.type") else {
            throw PunaError("\(path): missing key general.type (a GGUF LoRA has general.type = adapter; is this a model?)")
        }
        guard type == "adapter" else {
            throw PunaError("\(path): general.type is '\(type)', not 'adapter': this is not a LoRA adapter (pass a model with -m)")
        }
        guard let adapterType = gguf.string("adapter.type") else { throw PunaError("\(path): missing key adapter.type") }
        guard adapterType == "lora" else { throw PunaError("\(path): adapter.type is '\(adapterType)'; Puna runs LoRA adapters only") }
        guard let alphaValue = gguf["adapter.lora.alpha"] else { throw PunaError("\(path): missing key adapter.lora.alpha") }
        guard let alpha = checkedAlpha(alphaValue.doubleValue) else {
            throw PunaError("\(path): adapter.lora.alpha must be a number of magnitude at most \(Int(maxAlpha)), found \(alphaValue.doubleValue.map { "\($0)" } ?? alphaValue.type.name)")
        }
        if gguf["adapter.alora.invocation_tokens"] != nil {
            throw PunaError("\(path): an activated LoRA (aLoRA), which Puna does not support")
        }
        if let arch = gguf.architecture, !ModelConfig.supportedArchitectures.contains(arch) {
            throw PunaError("\(path): adapter for architecture '\(arch)'; Puna runs \(ModelConfig.supportedArchitectures.joined(separator: ", "))")
        }

        var halves: [String: (a: GGUFTensorInfo?, b: GGUFTensorInfo?)] = [:]
        var order: [String] = []
        var strays: [String] = []
        for t in gguf.tensors {
            let isA = t.name.hasSuffix(".lora_a"), isB = t.name.hasSuffix(".lora_b")
            guard isA || isB else { strays.append(t.name); continue }
            let base = String(t.name.dropLast(".lora_a".count))
            if halves[base] == nil { order.append(base) }
            var entry = halves[base] ?? (nil, nil)
            if isA { entry.a = t } else { entry.b = t }
            halves[base] = entry
        }
        if !strays.isEmpty {
            throw PunaError("\(path): tensors that are not LoRA factors: '\(strays.prefix(3).joined(separator: "', '"))'\(strays.count > 3 ? " and \(strays.count - 3) more" : "") (adapters that also replace norms are not supported)")
        }
        var pairs: [RawPair] = []
        var unknown: [String] = []
        var modules: [String] = []
        for base in order {
            let entry = halves[base]!
            guard let a = entry.a else { throw PunaError("\(path): '\(base).lora_b' has no matching '\(base).lora_a'") }
            guard let b = entry.b else { throw PunaError("\(path): '\(base).lora_a' has no matching '\(base).lora_b'") }
            let parts = base.split(separator: ".").map { String($0) }
            var known = false
            if base == "output.weight" || base == "token_embd.weight" {
                known = true
            } else if parts.count == 4, parts[0] == "blk", Int(parts[1]) != nil, parts[3] == "weight", ggufBlockTargets.contains(parts[2]) {
                known = true
            }
            guard known else {
                let kind = parts.count >= 3 ? parts[parts.count - 2] : base
                if !unknown.contains(kind) { unknown.append(kind) }
                continue
            }
            let module = parts.count == 4 ? parts[2] : parts[0]
            if !modules.contains(module) { modules.append(module) }
            var matrices: [LoRAMatrix] = []
            for t in [a, b] {
                guard t.shape.count == 2 || (t.shape.count > 2 && t.shape.dropFirst(2).allSatisfy { $0 == 1 }) else {
                    throw PunaError("\(path): tensor '\(t.name)' has shape \(shapeText(t.shape)), expected 2 dimensions")
                }
                guard t.type.canDecode, puna_matmul_supports(Int32(t.type.rawValue)) != 0 else {
                    throw PunaError("\(path): tensor '\(t.name)' has type \(t.type.name), which Puna cannot compute with")
                }
                matrices.append(LoRAMatrix(type: t.type, rows: t.shape[1], cols: t.shape[0], data: gguf.data(of: t).baseAddress ?? UnsafeRawPointer(bitPattern: 16)!))
            }
            let embedding = base == "token_embd.weight"
            pairs.append(RawPair(target: base, kind: embedding ? .embedding : .linear, a: matrices[0], b: matrices[1],
                                 aRowPerToken: embedding, aName: a.name, bName: b.name,
                                 aShape: shapeText(a.shape), bShape: shapeText(b.shape), alpha: nil, declaredRank: nil))
        }
        var warnings: [String] = []
        if !unknown.isEmpty {
            warnings.append("ignored LoRA tensors of matrices that no architecture Puna runs has: \(unknown.joined(separator: ", "))")
        }
        var maxRank = 0
        for p in pairs { maxRank = max(maxRank, p.kind == .embedding ? p.a.cols : p.a.rows) }
        return ParsedAdapter(format: .gguf, rank: maxRank, alpha: Float(alpha), rsLoRA: false, targetModules: modules,
                             pairs: pairs, warnings: warnings, safetensors: nil, gguf: gguf)
    }
}

/// HF row i of a Q/K projection → GGUF row: within each head of size d, row j < d/2 goes to 2j and
/// row j ≥ d/2 to 2(j − d/2) + 1 (what convert_hf_to_gguf.py does to the base weights).
func rotaryRowOrder(rows: Int, heads: Int) -> [Int] {
    let d = rows / heads, half = d / 2
    var order = [Int](repeating: 0, count: rows)
    for h in 0..<heads {
        for j in 0..<d {
            order[h * d + j] = h * d + (j < half ? 2 * j : 2 * (j - half) + 1)
        }
    }
    return order
}

/// HF row i of BLOOM's query_key_value ([head][q k v][head_dim]) → GGUF row ([q k v][head][head_dim]),
/// the regrouping convert_hf_to_gguf.py applies to the base weights.
func perHeadQKVRowOrder(heads: Int, headDimension d: Int) -> [Int] {
    var order = [Int](repeating: 0, count: 3 * heads * d)
    for h in 0..<heads {
        for part in 0..<3 {
            for j in 0..<d { order[(h * 3 + part) * d + j] = (part * heads + h) * d + j }
        }
    }
    return order
}

/// Whether `needle` occurs in `text` (Embedded Swift's String has no substring search).
func containsText(_ text: String, _ needle: String) -> Bool {
    let t = Array(text.utf8), n = Array(needle.utf8)
    guard n.count <= t.count else { return false }
    if n.isEmpty { return true }
    for start in 0...(t.count - n.count) where t[start] == n[0] {
        var i = 1
        while i < n.count && t[start + i] == n[i] { i += 1 }
        if i == n.count { return true }
    }
    return false
}

func baseName(_ path: String) -> String {
    var p = Substring(path)
    while p.count > 1 && p.hasSuffix("/") { p = p.dropLast() }
    if let slash = p.lastIndex(of: "/") { return String(p[p.index(after: slash)...]) }
    return String(p)
}

func directoryOf(_ path: String) -> String {
    guard let slash = path.lastIndex(of: "/") else { return "." }
    let d = String(path[..<slash])
    return d.isEmpty ? "/" : d
}

// MARK: - adapter sets

/// Adapters applied together, each with a user scale (1 = as trained).
public struct AdapterSet {
    public var entries: [(adapter: LoRAAdapter, scale: Float)]

    public init(_ entries: [(adapter: LoRAAdapter, scale: Float)] = []) {
        self.entries = entries
    }

    /// No adapters.
    public static var none: AdapterSet { AdapterSet() }

    public var isEmpty: Bool { entries.isEmpty }

    /// Same adapters (by identity) with the same scales, in the same order.
    public func isSame(as other: AdapterSet) -> Bool {
        guard entries.count == other.entries.count else { return false }
        for i in 0..<entries.count where entries[i].adapter !== other.entries[i].adapter || entries[i].scale != other.entries[i].scale {
            return false
        }
        return true
    }

    /// The (pair, total scale) of every adapter that updates `target`.
    func parts(for target: String) -> [(weights: LoRAWeights, scale: Float)] {
        var out: [(weights: LoRAWeights, scale: Float)] = []
        for e in entries {
            if let w = e.adapter.weights[target] { out.append((w, e.scale * w.scale)) }
        }
        return out
    }
}

/// The model's active adapters, shared with its matrices (a Linear reads it in `forward`).
final class AdapterState {
    var active = AdapterSet() {
        didSet { generation &+= 1 }
    }
    /// Changes with every assignment of `active`: matrices rebuild their cached pairs when it moved.
    private(set) var generation = 0
}

extension LanguageModel {
    /// Adapters applied to every evaluation. Set it between requests to enable, disable or
    /// re-scale adapters without reloading the base; the adapters must have been loaded with
    /// `LoRAAdapter.load(path:for:)` for this model.
    public var activeAdapters: AdapterSet {
        get { adapterState.active }
        set {
            for e in newValue.entries where e.adapter.isBound { e.adapter.prepareForUnmergedUse() }
            adapterState.active = newValue
        }
    }

    /// Every matrix of the model with its GGUF tensor name (the tied output head under "output.weight").
    var namedMatrices: [Linear] {
        var all: [Linear] = [tokenEmbedding]
        for l in layers { all += l.matrices }
        all.append(output)
        return all
    }

    /// The matrix a target names, if the model has it.
    func matrix(named target: String) -> Linear? {
        if target == "token_embd.weight" { return tokenEmbedding }
        if target == "output.weight" { return output }
        let parts = target.split(separator: ".")
        guard parts.count == 4, parts[0] == "blk", parts[3] == "weight", let i = Int(parts[1]), i >= 0, i < layers.count else { return nil }
        let name = "blk.\(i).\(parts[2]).weight"
        return layers[i].matrices.first { $0.name == name }
    }

    /// (rows updated by B, inputs of A) for a target: a linear layer's outputs × inputs; for the
    /// token embedding, n_embd × vocabulary (its LoRA maps a token to an n_embd row).
    func adapterTargetShape(_ target: String) -> (Int, Int)? {
        guard let m = matrix(named: target) else { return nil }
        if target == "token_embd.weight" { return (m.cols, m.rows) }
        return (m.rows, m.cols)
    }

    /// Head count of a Q or K projection (whose rows convert_hf_to_gguf.py reordered), else nil.
    func rotaryHeads(_ target: String) -> Int? {
        guard architecture.reordersQueryKeyRows, !gguf.isHuggingFaceFolder else { return nil }
        if target.hasSuffix(".attn_q.weight") { return config.headCount }
        if target.hasSuffix(".attn_k.weight") { return config.headCountKV }
        return nil
    }

    /// Add the embedding adapters' rows for `tokens` into x ([n][n_embd]); `adapters[t]` selects
    /// the set of token t (nil: the active set for all).
    @_spi(Testing) public func addEmbeddingAdapterDeltas(_ tokens: [Int32], into x: UnsafeMutablePointer<Float>, adapters: [AdapterSet]?) throws(PunaError) {
        let groups = adapterGroups(target: "token_embd.weight", nTokens: tokens.count, adapters: adapters, state: adapterState)
        let e = config.embeddingLength
        for g in groups where g.weights.kind == .embedding {
            let w = g.weights, m = g.rows.count, r = w.rank
            let coefficients = Buffer(m * r), delta = Buffer(m * e)
            for (i, t) in g.rows.enumerated() {
                w.embeddingCoefficients(token: Int(tokens[t]), into: coefficients.p + i * r)
                for k in 0..<r { coefficients.p[i * r + k] *= g.scales[i] }
            }
            try kernelStatus(puna_matmul(pool, Int32(w.b.type.rawValue), w.b.data, Int64(w.b.rows), Int64(r), coefficients.p, Int64(m), delta.p),
                             "puna_matmul of the embedding adapter's B")
            for (i, t) in g.rows.enumerated() { puna_add(x + t * e, x + t * e, delta.p + i * e, Int64(e)) }
        }
    }
}

/// Rows of a step that one adapter pair applies to, each with its total scale.
struct AdapterGroup {
    let weights: LoRAWeights
    var rows: [Int]
    var scales: [Float]
}

/// Group the rows of a step by adapter pair for `target`: adapters[t] is row t's set (rows past
/// its end get none); nil means the active set for every row.
func adapterGroups(target: String, nTokens: Int, adapters: [AdapterSet]?, state: AdapterState?) -> [AdapterGroup] {
    var groups: [AdapterGroup] = []
    guard let adapters else {
        guard let state, !state.active.isEmpty else { return [] }
        let all = Array(0..<nTokens)
        for (w, s) in state.active.parts(for: target) {
            groups.append(AdapterGroup(weights: w, rows: all, scales: [Float](repeating: s, count: nTokens)))
        }
        return groups
    }
    for t in 0..<min(nTokens, adapters.count) {
        for (w, s) in adapters[t].parts(for: target) {
            if let g = groups.firstIndex(where: { $0.weights === w }) {
                groups[g].rows.append(t)
                groups[g].scales.append(s)
            } else {
                groups.append(AdapterGroup(weights: w, rows: [t], scales: [s]))
            }
        }
    }
    return groups
}

/// A matrix's pairs of the model's active adapter set, ready for puna_lora_apply: rebuilt when
/// the set changes (AdapterState.generation), so a token costs no allocation or lookup.
final class LinearAdapterCache {
    var generation = -1
    /// `count` factor descriptions with their total scales.
    private(set) var factors: UnsafeMutablePointer<puna_lora_factors>? = nil
    private(set) var scales: UnsafeMutablePointer<Float>? = nil
    private(set) var count = 0
    /// Pairs the kernel does not take (quantized factors), applied through puna_matmul.
    private(set) var others: [(weights: LoRAWeights, scale: Float)] = []
    /// Keeps the pairs (and their Bᵀ) alive as long as the pointers above are used.
    private var held: [LoRAWeights] = []

    deinit { release() }

    private func release() {
        factors?.deallocate()
        scales?.deallocate()
        factors = nil
        scales = nil
        count = 0
    }

    func rebuild(_ parts: [(weights: LoRAWeights, scale: Float)], generation: Int) {
        release()
        var fast: [(weights: LoRAWeights, scale: Float)] = []
        others = []
        for p in parts where p.weights.kind == .linear {
            p.weights.prepareTransposedB()
            if p.weights.transposedB != nil {
                fast.append(p)
            } else {
                others.append(p)
            }
        }
        if !fast.isEmpty {
            let f = UnsafeMutablePointer<puna_lora_factors>.allocate(capacity: fast.count)
            let s = UnsafeMutablePointer<Float>.allocate(capacity: fast.count)
            for (i, p) in fast.enumerated() {
                (f + i).initialize(to: p.weights.kernelFactors)
                s[i] = p.scale
            }
            factors = f
            scales = s
            count = fast.count
        }
        held = fast.map { $0.weights }
        self.generation = generation
    }
}

extension Linear {
    /// The model's active pairs for this matrix, rebuilt when the set changed; nil when none.
    fileprivate func activeAdapterCache() -> LinearAdapterCache? {
        guard let state = adapterState else { return nil }
        if state.active.isEmpty {
            if adapterCache != nil { adapterCache = nil }  // let go of the last set's pairs
            return nil
        }
        let cache: LinearAdapterCache
        if let c = adapterCache {
            cache = c
        } else {
            cache = LinearAdapterCache()
            adapterCache = cache
        }
        if cache.generation != state.generation { cache.rebuild(state.active.parts(for: name), generation: state.generation) }
        return cache
    }

    /// One token through `matrices` (which read the same x: Q, K, V; gate, up; or just one) with the
    /// active adapters: every W·x and every pair's delta in one pool run (puna_lora_matmul_many1).
    /// false when some pair is one the kernel does not take: the caller then goes matrix by matrix
    /// through puna_matmul and addAdapterDeltas.
    static func forwardOneTokenWithAdapters(_ matrices: [Linear], _ pool: OpaquePointer, _ x: UnsafePointer<Float>,
                                            _ ys: [UnsafeMutablePointer<Float>]) -> Bool {
        var pairs: [UnsafePointer<puna_lora_factors>?] = []
        var scales: [UnsafePointer<Float>?] = []
        var counts: [Int32] = []
        for m in matrices {
            guard let cache = m.activeAdapterCache() else {
                pairs.append(nil); scales.append(nil); counts.append(0)
                continue
            }
            guard cache.others.isEmpty else { return false }
            pairs.append(cache.factors.map { UnsafePointer($0) })
            scales.append(cache.scales.map { UnsafePointer($0) })
            counts.append(Int32(cache.count))
        }
        let types = matrices.map { Int32($0.type.rawValue) }
        let weights: [UnsafeRawPointer?] = matrices.map { $0.weights }
        let rows = matrices.map { Int64($0.rows) }
        let outputs: [UnsafeMutablePointer<Float>?] = ys.map { $0 }
        return puna_lora_matmul_many1(pool, Int32(matrices.count), types, weights, rows, Int64(matrices[0].cols), x, outputs,
                                      pairs, scales, counts) == 0
    }

    /// y[t] += s·B(A·x[t]) for every adapter pair that updates this matrix: the active set of the
    /// model for every row (adapters nil), or adapters[t] for row t. Rows sharing a pair go through
    /// one puna_lora_apply (no gathering: it takes the row indices).
    func addAdapterDeltas(_ pool: OpaquePointer, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
                          nTokens: Int, adapters: [AdapterSet]?) throws(PunaError) {
        guard let adapters else {
            // The hot path (every token of run/chat/perplexity): the cached pairs.
            guard let cache = activeAdapterCache() else { return }
            if let factors = cache.factors, let scales = cache.scales {
                for i in 0..<cache.count {
                    try kernelStatus(puna_lora_apply(pool, factors + i, x, y, Int64(rows), Int64(nTokens), nil, nil, scales[i]),
                                     "puna_lora_apply on \(name)")
                }
            }
            for (w, s) in cache.others {
                try addDeltaThroughMatmul(pool, w, x, y, nTokens: nTokens, rowList: Array(0..<nTokens), scales: [Float](repeating: s, count: nTokens))
            }
            return
        }
        let groups = adapterGroups(target: name, nTokens: nTokens, adapters: adapters, state: adapterState)
        for g in groups where g.weights.kind == .linear {
            let w = g.weights
            w.prepareTransposedB()
            guard w.transposedB != nil else {
                try addDeltaThroughMatmul(pool, w, x, y, nTokens: nTokens, rowList: g.rows, scales: g.scales)
                continue
            }
            var factors = w.kernelFactors
            let rowIndices = g.rows.map { Int32(truncatingIfNeeded: $0) }
            let status = rowIndices.withUnsafeBufferPointer { r in
                g.scales.withUnsafeBufferPointer { s in
                    puna_lora_apply(pool, &factors, x, y, Int64(rows), Int64(g.rows.count), r.baseAddress, s.baseAddress, 0)
                }
            }
            try kernelStatus(status, "puna_lora_apply on \(name)")
        }
    }

    /// The general path for pairs puna_lora_apply does not take: A·x and B·(A·x) through
    /// puna_matmul for the rows in `rowList`, each scaled by its entry of `scales`.
    private func addDeltaThroughMatmul(_ pool: OpaquePointer, _ w: LoRAWeights, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
                                       nTokens: Int, rowList: [Int], scales: [Float]) throws(PunaError) {
        let m = rowList.count, r = w.rank, out = w.b.rows
        // Rows 0..<n in order can be read in place; otherwise gather them.
        var input = x
        var gathered: Buffer? = nil
        if m != nTokens {
            let buffer = Buffer(m * cols)
            for (i, t) in rowList.enumerated() { buffer.p.advanced(by: i * cols).update(from: x + t * cols, count: cols) }
            gathered = buffer
            input = UnsafePointer(buffer.p)
        }
        let ax = Buffer(m * r), delta = Buffer(m * out)
        try kernelStatus(puna_matmul(pool, Int32(w.a.type.rawValue), w.a.data, Int64(r), Int64(cols), input, Int64(m), ax.p),
                         "puna_matmul of an adapter's A on \(name)")
        for i in 0..<m {
            let s = scales[i]
            for k in 0..<r { ax.p[i * r + k] *= s }
        }
        try kernelStatus(puna_matmul(pool, Int32(w.b.type.rawValue), w.b.data, Int64(out), Int64(r), ax.p, Int64(m), delta.p),
                         "puna_matmul of an adapter's B on \(name)")
        for (i, t) in rowList.enumerated() {
            let row = y + t * rows, d = delta.p + i * out
            if let order = w.outputRows {
                for o in 0..<out { row[order[o]] += d[o] }
            } else {
                puna_add(row, row, d, Int64(out))
            }
        }
        _ = gathered
    }
}
