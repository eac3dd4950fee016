import CPuna

/// The bitsandbytes-quantized matrices of a Hugging Face folder (`quantization_config` with
/// `quant_method: bitsandbytes`), as descriptors the kernels take (puna_bnb.h) pointing into the
/// mapped safetensors: nothing is copied except the small f32 tables when the file leaves them
/// misaligned.
///
/// What transformers writes for a 4-bit `X.weight` ([rows, cols]): `X.weight` U8 (two codes per
/// byte), `X.weight.absmax` (F32 per block of 64, or U8 codes with double quantization, which adds
/// `X.weight.nested_absmax` F32 per 256 blocks and `X.weight.nested_quant_map` F32[256]),
/// `X.weight.quant_map` F32[16], and `X.weight.quant_state.bitsandbytes__nf4|fp4`: U8 bytes of a JSON
/// object with the shape, blocksize and nested offset. For 8-bit (LLM.int8): `X.weight` I8
/// [rows, cols], `X.SCB` F32[rows], `X.weight_format` U8 (0: row-major).
public final class BitsAndBytesWeights {
    /// "nf4", "fp4" or "int8".
    public let scheme: String
    public let doubleQuant: Bool
    /// Weights per absmax (4-bit).
    public let blockSize: Int
    /// How `puna info` names the quantized tensors: bnb-nf4, bnb-nf4-dq (double quant), bnb-fp4, bnb-int8.
    public var typeName: String { "bnb-" + scheme + (doubleQuant ? "-dq" : "") }
    /// Quantized bytes of each matrix (codes and scales), by GGUF name.
    public private(set) var bytes: [String: Int] = [:]
    private var descriptors: [String: UnsafeMutableRawPointer] = [:]
    /// 4-bit matrices whose quant_state "dtype" is float16 or bfloat16 (a base loaded in that dtype).
    private var dequantizedTypes: [String: GGMLType] = [:]
    private var owned: [UnsafeMutableRawPointer] = []

    /// Suffixes of a quantized weight's companion tensors (after the weight's own name, or after the
    /// module name for SCB and weight_format).
    static let weightSuffixes = [".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map",
                                 ".quant_state.bitsandbytes__nf4", ".quant_state.bitsandbytes__fp4"]
    static let moduleSuffixes = [".SCB", ".weight_format"]

    /// Whether a safetensors name is a companion of a quantized weight rather than a weight.
    static func isCompanion(_ name: String) -> Bool {
        weightSuffixes.contains { name.hasSuffix(".weight" + $0) } || moduleSuffixes.contains { name.hasSuffix($0) }
    }

    /// The quantized weight a companion tensor belongs to.
    static func owner(ofCompanion name: String) -> String? {
        for suffix in weightSuffixes where name.hasSuffix(".weight" + suffix) { return String(name.dropLast(suffix.count)) }
        for suffix in moduleSuffixes where name.hasSuffix(suffix) { return String(name.dropLast(suffix.count)) + ".weight" }
        return nil
    }

    /// Every companion tensor (a `parts` entry that isCompanion) must belong to one of the quantized
    /// weights named by `owners` (Hugging Face names).
    func checkCompanions(_ parts: [String: Part], owners: Set<String>) throws(PunaError) {
        for (name, part) in parts where BitsAndBytesWeights.isCompanion(name) {
            guard let owner = BitsAndBytesWeights.owner(ofCompanion: name), owners.contains(owner) else {
                throw PunaError("\(part.path): tensor '\(clipped(name))' belongs to no \(scheme)-quantized weight of the folder")
            }
        }
    }

    init(config quantization: JSONValue, file: String) throws(PunaError) {
        let method = quantization["quant_method"]?.string ?? "?"
        guard method == "bitsandbytes" else {
            throw PunaError("\(file): quantization_config.quant_method '\(clipped(method))' is not supported (Puna reads bitsandbytes 4-bit and 8-bit folders, and F32/F16/BF16 ones)")
        }
        let four = quantization["load_in_4bit"]?.bool ?? false, eight = quantization["load_in_8bit"]?.bool ?? false
        guard four != eight else {
            throw PunaError("\(file): quantization_config must set exactly one of load_in_4bit and load_in_8bit")
        }
        if four {
            let type = quantization["bnb_4bit_quant_type"]?.string ?? "fp4"
            guard type == "nf4" || type == "fp4" else {
                throw PunaError("\(file): quantization_config.bnb_4bit_quant_type '\(clipped(type))' is not nf4 or fp4")
            }
            scheme = type
            doubleQuant = quantization["bnb_4bit_use_double_quant"]?.bool ?? false
            blockSize = 64
        } else {
            if quantization["llm_int8_has_fp16_weight"]?.bool == true {
                throw PunaError("\(file): quantization_config.llm_int8_has_fp16_weight is set: the folder keeps 16-bit weights, not int8 ones")
            }
            scheme = "int8"
            doubleQuant = false
            blockSize = 0
        }
    }

    deinit { for p in owned { p.deallocate() } }

    /// The kernel descriptor of a matrix (by GGUF name), nil when it is not quantized.
    public func descriptor(_ name: String) -> UnsafeRawPointer? { descriptors[name].map { UnsafeRawPointer($0) } }

    /// Dequantize rows [first, first + count) of a quantized matrix into out ([count][cols]).
    func dequantize(_ name: String, type: GGMLType, cols: Int, first: Int, count: Int,
                    into out: UnsafeMutablePointer<Float>) throws(PunaError) {
        guard let d = descriptors[name] else { throw PunaError("internal error: '\(name)' is not a bitsandbytes matrix") }
        let status = type == .bnb4
            ? puna_bnb4_dequantize_rows(d.assumingMemoryBound(to: puna_bnb4_weight.self), Int64(cols), Int64(first), Int64(first + count), out)
            : puna_bnb_int8_dequantize_rows(d.assumingMemoryBound(to: puna_bnb_int8_weight.self), Int64(cols), Int64(first), Int64(first + count), out)
        try kernelStatus(status, "dequantizing \(name)")
    }

    /// The type bitsandbytes' dequantize_4bit returns a matrix's values in (its quant_state's "dtype"):
    /// .f16 or .bf16, nil for float32 (and for 8-bit matrices, which dequantize to float32). Puna's
    /// kernels compute with the f32 values; `puna convert` rounds them to this type, as bitsandbytes does.
    public func dequantizedType(_ name: String) -> GGMLType? { dequantizedTypes[name] }

    /// A tensor of the folder: which shard file, its header entry, and its bytes.
    struct Part {
        let info: SafetensorsTensorInfo
        let source: Int
        let path: String
        let bytes: UnsafeRawBufferPointer
    }

    /// Make the descriptor of quantized weight `hfName` (mapped as GGUF `name`) from its parts,
    /// checking every size against the shape; returns the tensor entry the model sees.
    func add(weight hfName: String, name: String, parts: [String: Part]) throws(PunaError) -> GGUFTensorInfo {
        guard let weight = parts[hfName] else { throw PunaError("internal error: no part '\(hfName)'") }
        let at = "\(weight.path): tensor '\(clipped(hfName))'"
        if scheme == "int8" {
            return try addInt8(weight, hfName: hfName, name: name, parts: parts, at: at)
        }
        guard weight.info.dtype == "U8" else {
            throw PunaError("\(at) has dtype \(weight.info.dtype); a bitsandbytes 4-bit weight is U8 (two codes per byte)")
        }
        func part(_ suffix: String) -> Part? { parts[hfName + suffix] }
        func need(_ suffix: String) throws(PunaError) -> Part {
            guard let p = part(suffix) else { throw PunaError("\(at): missing its companion tensor '\(clipped(hfName + suffix))'") }
            return p
        }
        // The quant_state JSON: shape, blocksize, nested offset.
        let stateSuffix = ".quant_state.bitsandbytes__" + scheme
        let otherSuffix = ".quant_state.bitsandbytes__" + (scheme == "nf4" ? "fp4" : "nf4")
        if part(otherSuffix) != nil {
            throw PunaError("\(at): its quant_state is \(otherSuffix.dropFirst(".quant_state.bitsandbytes__".count)) but config.json says \(scheme)")
        }
        let statePart = try need(stateSuffix)
        let stateAt = "\(statePart.path): tensor '\(clipped(hfName + stateSuffix))'"
        guard statePart.info.dtype == "U8", statePart.bytes.count <= 1 << 16 else {
            throw PunaError("\(stateAt) must be U8 bytes of a JSON object of at most 64 KiB")
        }
        let state: JSONValue
        do throws(PunaError) { state = try JSONValue.parse(bytes: statePart.bytes.bindMemory(to: UInt8.self)) } catch {
            throw PunaError("\(stateAt): not valid JSON: \(error.message)")
        }
        guard state.object != nil else { throw PunaError("\(stateAt): not a JSON object") }
        if let t = state["quant_type"]?.string, t != scheme {
            throw PunaError("\(stateAt): quant_type '\(clipped(t))' but config.json says \(scheme)")
        }
        guard let blocks = state["blocksize"]?.int, blocks == blockSize else {
            throw PunaError("\(stateAt): blocksize must be \(blockSize) (what transformers writes; Puna's kernels take blocks of 64)")
        }
        guard let shape = state["shape"]?.array, shape.count == 2, let rows = shape[0].int, let cols = shape[1].int,
              (1...(1 << 24)).contains(rows), (1...(1 << 24)).contains(cols) else {
            throw PunaError("\(stateAt): shape must be [rows, cols] with each from 1 to \(1 << 24)")
        }
        guard cols % blockSize == 0 else {
            throw PunaError("\(stateAt): \(cols) columns are not a whole number of blocks of \(blockSize)")
        }
        let elements = rows * cols, blockCount = elements / blockSize
        guard weight.info.elementCount == elements / 2, weight.bytes.count == elements / 2 else {
            throw PunaError("\(at) holds \(weight.bytes.count) bytes, but a \(rows)×\(cols) 4-bit weight packs into \(elements / 2)")
        }
        let quantMap = try floats(try need(".quant_map"), count: 16, name: hfName + ".quant_map", finite: true)
        let absmaxPart = try need(".absmax")
        let d = UnsafeMutablePointer<puna_bnb4_weight>.allocate(capacity: 1)
        owned.append(UnsafeMutableRawPointer(d))
        d.initialize(to: puna_bnb4_weight())
        d.pointee.packed = weight.bytes.baseAddress!.assumingMemoryBound(to: UInt8.self)
        d.pointee.quant_map = quantMap
        d.pointee.blocksize = Int64(blockSize)
        var quantizedBytes = elements / 2 + 64
        let nestedPresent = part(".nested_absmax") != nil || part(".nested_quant_map") != nil
        guard nestedPresent == doubleQuant else {
            throw PunaError("\(at): config.json says bnb_4bit_use_double_quant \(doubleQuant) but the nested_absmax/nested_quant_map tensors are \(nestedPresent ? "there" : "missing")")
        }
        if doubleQuant {
            guard absmaxPart.info.dtype == "U8", absmaxPart.bytes.count == blockCount else {
                throw PunaError("\(absmaxPart.path): tensor '\(clipped(hfName)).absmax' must be \(blockCount) U8 codes (one per block of \(blockSize)), found \(absmaxPart.info.elementCount) \(absmaxPart.info.dtype)")
            }
            guard let nestedBlocks = state["nested_blocksize"]?.int, (1...(1 << 20)).contains(nestedBlocks) else {
                throw PunaError("\(stateAt): nested_blocksize must be an integer from 1 to \(1 << 20)")
            }
            guard let offset = state["nested_offset"]?.double, offset.isFinite, abs(offset) < 1e30 else {
                throw PunaError("\(stateAt): nested_offset must be a finite number")
            }
            let nestedCount = (blockCount + nestedBlocks - 1) / nestedBlocks
            d.pointee.absmax_codes = absmaxPart.bytes.baseAddress!.assumingMemoryBound(to: UInt8.self)
            d.pointee.nested_quant_map = try floats(try need(".nested_quant_map"), count: 256, name: hfName + ".nested_quant_map", finite: true)
            d.pointee.nested_absmax = try floats(try need(".nested_absmax"), count: nestedCount, name: hfName + ".nested_absmax", finite: true)
            d.pointee.nested_blocksize = Int64(nestedBlocks)
            d.pointee.nested_offset = Float(offset)
            quantizedBytes += blockCount + 4 * nestedCount + 1024
        } else {
            d.pointee.absmax = try floats(absmaxPart, count: blockCount, name: hfName + ".absmax", finite: false)
            quantizedBytes += 4 * blockCount
        }
        descriptors[name] = UnsafeMutableRawPointer(d)
        bytes[name] = quantizedBytes
        switch state["dtype"]?.string {
        case "float16": dequantizedTypes[name] = .f16
        case "bfloat16": dequantizedTypes[name] = .bf16
        default: break
        }
        return GGUFTensorInfo(name: name, shape: [cols, rows], type: .bnb4, offset: weight.info.offset,
                              byteCount: weight.info.byteCount, source: weight.source)
    }

    private func addInt8(_ weight: Part, hfName: String, name: String, parts: [String: Part], at: String) throws(PunaError) -> GGUFTensorInfo {
        guard weight.info.dtype == "I8", weight.info.shape.count == 2 else {
            throw PunaError("\(at) has dtype \(weight.info.dtype) and \(weight.info.shape.count) dimensions; a bitsandbytes 8-bit weight is I8 [rows, cols]")
        }
        let rows = weight.info.shape[0], cols = weight.info.shape[1]
        let module = String(hfName.dropLast(".weight".count))
        guard let scalePart = parts[module + ".SCB"] else { throw PunaError("\(at): missing its row scales '\(clipped(module)).SCB'") }
        if let format = parts[module + ".weight_format"] {
            guard format.bytes.count == 1, format.bytes[0] == 0 else {
                throw PunaError("\(format.path): tensor '\(clipped(module)).weight_format' is not 0 (row-major): Puna reads the row layout transformers saves")
            }
        }
        let scales = try floats(scalePart, count: rows, name: module + ".SCB", finite: true)
        let d = UnsafeMutablePointer<puna_bnb_int8_weight>.allocate(capacity: 1)
        owned.append(UnsafeMutableRawPointer(d))
        d.initialize(to: puna_bnb_int8_weight(weight: weight.bytes.baseAddress!.assumingMemoryBound(to: Int8.self), row_scale: scales))
        descriptors[name] = UnsafeMutableRawPointer(d)
        bytes[name] = rows * cols + 4 * rows
        return GGUFTensorInfo(name: name, shape: [cols, rows], type: .bnbInt8, offset: weight.info.offset,
                              byteCount: weight.info.byteCount, source: weight.source)
    }

    /// `count` F32 values of a part, in place when aligned (else copied); with `finite`, each checked.
    private func floats(_ part: Part, count: Int, name: String, finite: Bool) throws(PunaError) -> UnsafePointer<Float> {
        guard part.info.dtype == "F32", part.bytes.count == 4 * count else {
            throw PunaError("\(part.path): tensor '\(clipped(name))' must be \(count) F32 values, found \(part.info.elementCount) \(part.info.dtype)")
        }
        var base = part.bytes.baseAddress!
        if Int(bitPattern: base) % 4 != 0 {
            let copy = UnsafeMutableRawPointer.allocate(byteCount: max(4 * count, 4), alignment: 64)
            copy.copyMemory(from: base, byteCount: 4 * count)
            owned.append(copy)
            base = UnsafeRawPointer(copy)
        }
        let values = base.assumingMemoryBound(to: Float.self)
        if finite {
            for i in 0..<count where !values[i].isFinite {
                throw PunaError("\(part.path): tensor '\(clipped(name))' holds a non-finite value at index \(i)")
            }
        }
        return values
    }
}
