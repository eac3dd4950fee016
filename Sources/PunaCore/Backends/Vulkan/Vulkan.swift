import CPuna
import CPunaVulkan

// The Swift side of the Vulkan backend is thin: CPunaVulkan does the Vulkan work (loader, memory,
// pipelines, recording); this file uploads the model's weights and records the same sequence of
// ops as `LanguageModel.forwardLayers` (one straight loop over the layers, with every optional
// part of a layer the architectures use), one command buffer per batch of tokens.

/// Settings for running a model on a Vulkan device (`LanguageModel.useVulkan`).
public struct VulkanOptions {
    /// Device index as `puna devices` lists them; -1 picks the best usable one.
    public var device: Int
    /// Layers on the GPU, counted from the first; the rest run on the CPU. -1 = all, and then the
    /// final norm and output matrix run on the GPU too.
    public var gpuLayers: Int
    /// Keep to the baseline shader tier (as PUNA_VK_BASELINE=1 does).
    public var forceBaseline: Bool
    /// A shader tier to force ("baseline", "subgroup", "int8"; `VulkanDevice.tierNames`); nil picks
    /// it from PUNA_VK_TIER / PUNA_VK_BASELINE, else the best the device supports. A tier the device
    /// lacks is an error.
    public var tier: String?
    /// Throw when the GPU cannot be used, instead of running on the CPU with `LanguageModel.backendNote`.
    public var required: Bool

    public init(device: Int = -1, gpuLayers: Int = -1, forceBaseline: Bool = false, tier: String? = nil, required: Bool = false) {
        self.device = device
        self.gpuLayers = gpuLayers
        self.forceBaseline = forceBaseline
        self.tier = tier
        self.required = required
    }
}

/// One Vulkan physical device, as `puna devices` lists it.
public struct VulkanDevice {
    public let index: Int
    public let name: String
    public let type: String               // integrated, discrete, virtual, cpu, other
    public let apiVersion: String         // "1.3.230"
    public let heaps: [VulkanHeap]
    public let subgroupSize: Int
    public let subgroupArithmetic: Bool
    public let shaderFloat16: Bool
    public let shaderInt8: Bool
    public let integerDotProduct: Bool
    public let storageBuffer16Bit: Bool
    public let storageBuffer8Bit: Bool
    public let externalMemoryHost: Bool
    public let sharedMemoryBytes: Int
    public let maxWorkgroupInvocations: Int
    public let maxStorageBufferRange: Int
    /// Vulkan 1.1 with a compute queue: Puna can run on it.
    public let usable: Bool

    /// The shader tier Puna picks on this device when none is forced: the best it supports (int8
    /// only with an accelerated dot product).
    public let tier: String
    /// Every tier, lowest first, with the features this device lacks for it (empty: supported).
    public let tiers: [(name: String, missing: String)]
    /// Whether the packed 4x8-bit signed dot product is fast on this device (not emulated).
    public let integerDotProductAccelerated: Bool

    /// The tier names, lowest first.
    public static var tierNames: [String] {
        (0..<Int32(PUNA_VK_TIER_COUNT.rawValue)).map { String(cString: puna_vk_tier_name($0)) }
    }

    /// Every device the Vulkan loader reports. Throws with the reason when Vulkan cannot be loaded
    /// (no libvulkan, no driver, a build without Vulkan headers).
    public static func all() throws(PunaError) -> [VulkanDevice] {
        guard puna_vk_load() != 0 else { throw PunaError("Vulkan is not available: \(String(cString: puna_vk_load_error()))") }
        var devices: [VulkanDevice] = []
        for i in 0..<Int(puna_vk_device_count()) {
            var info = puna_vk_device_info()
            guard puna_vk_device_query(Int32(i), &info) == 0 else { continue }
            devices.append(VulkanDevice(index: i, info: info))
        }
        return devices
    }

    init(index: Int, info: puna_vk_device_info) {
        self.index = index
        var copy = info
        name = withUnsafeBytes(of: &copy.name) { String(cString: $0.baseAddress!.assumingMemoryBound(to: CChar.self)) }
        type = String(cString: puna_vk_device_type_name(info.type))
        let v = info.api_version
        apiVersion = "\((v >> 22) & 0x7f).\((v >> 12) & 0x3ff).\(v & 0xfff)"
        var heaps: [VulkanHeap] = []
        withUnsafeBytes(of: &copy.heap_size) { sizes in
            withUnsafeBytes(of: &copy.heap_device_local) { local in
                for h in 0..<Int(info.heap_count) {
                    heaps.append(VulkanHeap(bytes: Int(sizes.load(fromByteOffset: h * 8, as: UInt64.self)),
                                            deviceLocal: local.load(fromByteOffset: h * 4, as: Int32.self) != 0))
                }
            }
        }
        self.heaps = heaps
        subgroupSize = Int(info.subgroup_size)
        subgroupArithmetic = info.subgroup_arithmetic != 0
        shaderFloat16 = info.shader_float16 != 0
        shaderInt8 = info.shader_int8 != 0
        integerDotProduct = info.integer_dot_product != 0
        storageBuffer16Bit = info.storage_buffer_16bit != 0
        storageBuffer8Bit = info.storage_buffer_8bit != 0
        externalMemoryHost = info.external_memory_host != 0
        sharedMemoryBytes = Int(info.max_shared_memory)
        maxWorkgroupInvocations = Int(info.max_workgroup_invocations)
        maxStorageBufferRange = Int(info.max_storage_buffer_range)
        usable = info.usable != 0
        integerDotProductAccelerated = info.integer_dot_product_accelerated != 0
        tier = String(cString: puna_vk_tier_name(puna_vk_best_tier(&copy)))
        var tiers: [(name: String, missing: String)] = []
        for t in 0..<Int32(PUNA_VK_TIER_COUNT.rawValue) {
            var missing = [CChar](repeating: 0, count: 256)
            _ = missing.withUnsafeMutableBufferPointer { puna_vk_tier_supported(&copy, t, $0.baseAddress, 256) }
            tiers.append((String(cString: puna_vk_tier_name(t)), missing.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }))
        }
        self.tiers = tiers
    }
}

public struct VulkanHeap {
    public let bytes: Int
    public let deviceLocal: Bool
}

/// Owns a CPunaVulkan context; everything holding GPU buffers keeps one of these alive.
final class VulkanContext {
    let vk: OpaquePointer

    init(device: Int, tier: Int32) throws(PunaError) {
        var message = [CChar](repeating: 0, count: 512)
        let created = message.withUnsafeMutableBufferPointer { puna_vk_create(Int32(device), tier, $0.baseAddress, 512) }
        guard let created else {
            throw PunaError(message.withUnsafeBufferPointer { String(cString: $0.baseAddress!) })
        }
        vk = created
    }

    deinit { puna_vk_destroy(vk) }

    var lastError: String { String(cString: puna_vk_error(vk)) }

    func fail(_ what: String) -> PunaError { PunaError("vulkan: \(what): \(lastError)") }

    func alloc(_ bytes: Int, host: Bool = false, dedicated: Bool = false, _ what: String) throws(PunaError) -> puna_vk_buffer {
        var b = puna_vk_buffer()
        guard puna_vk_alloc(vk, UInt64(max(bytes, 4)), host ? Int32(PUNA_VK_MEMORY_HOST.rawValue) : Int32(PUNA_VK_MEMORY_DEVICE.rawValue),
                            dedicated ? 1 : 0, &b) == 0 else { throw fail("allocating \(what) (\(formatBytes(bytes)))") }
        return b
    }

    func floats(_ values: [Float], _ what: String) throws(PunaError) -> puna_vk_buffer {
        let b = try alloc(values.count * 4, what)
        let rc = values.withUnsafeBytes { puna_vk_write(vk, b, 0, $0.baseAddress, UInt64($0.count)) }
        guard rc == 0 else { throw fail("uploading \(what)") }
        return b
    }

    func hostFloats(_ b: puna_vk_buffer) -> UnsafeMutablePointer<Float> {
        puna_vk_host_pointer(vk, b)!.assumingMemoryBound(to: Float.self)
    }
}

/// The GPU layers' keys and values, attached to a `KVCache` (freed with it). Each layer keeps as
/// many rows as the CPU cache does: one per position, or the ring of a sliding-window layer
/// (position p in row p % rows, `KVCache.ringRows`).
final class VulkanKVCache {
    let context: VulkanContext
    let keys: [puna_vk_buffer]
    let values: [puna_vk_buffer]
    let capacity: Int
    let rows: [Int]
    let format: Int32      // enum puna_vk_kv_format
    /// Bytes of the keys and values of every layer here.
    let byteCount: Int

    init(context: VulkanContext, capacity: Int, rows: [Int], kvDimension: Int, format: Int32) throws(PunaError) {
        self.context = context
        self.capacity = capacity
        self.rows = rows
        self.format = format
        let rowBytes = Int(puna_vk_kv_row_bytes(format, UInt32(kvDimension)))
        guard rowBytes > 0 else { throw PunaError("vulkan: KV cache rows of \(kvDimension) values cannot use format \(format)") }
        var k: [puna_vk_buffer] = [], v: [puna_vk_buffer] = []
        for (l, r) in rows.enumerated() {
            let bytes = r * rowBytes
            k.append(try context.alloc(bytes, dedicated: true, "the KV cache of layer \(l)"))
            v.append(try context.alloc(bytes, dedicated: true, "the KV cache of layer \(l)"))
        }
        keys = k
        values = v
        byteCount = 2 * rows.reduce(0, +) * rowBytes
    }

    deinit {
        for b in keys { puna_vk_free(context.vk, b) }
        for b in values { puna_vk_free(context.vk, b) }
    }
}

/// A weight matrix as the shaders read it.
struct VulkanMatrix {
    let buffer: puna_vk_buffer
    let type: Int32      // GGML type the shader decodes (may differ from the file's; bitsandbytes
                         // pseudo-types keep theirs, in the GPU layout of CPunaVulkan/bnb_layout.h)
    let rows: Int
    let cols: Int
    /// A 4-bit bitsandbytes matrix's 16-entry quant_map, sent with each product (nil for other types).
    var codeTable: [Float]? = nil

    /// Rows first..<first+count of this matrix, reading the same memory (a band of a fused QKV or
    /// gate/up matrix, or of a LoRA B factor).
    func rows(_ first: Int, _ count: Int) -> VulkanMatrix {
        let rowBytes = UInt64(puna_vk_matrix_bytes(type, 1, Int64(cols)))
        var b = buffer
        b.offset += UInt64(first) * rowBytes
        b.size = UInt64(count) * rowBytes
        return VulkanMatrix(buffer: b, type: type, rows: count, cols: cols, codeTable: codeTable)
    }
}

final class VulkanBackend {
    let context: VulkanContext
    let file: MappedFile          // imported memory points into this mapping: keep it alive
    let gpuLayerCount: Int
    /// Whether device memory is host RAM (every device type but a discrete GPU): what the memory
    /// estimate counts the device's KV caches against.
    let sharesHostMemory: Bool
    let maxBatch: Int
    let description: String

    /// One output of a projection: a matrix, or a band of rows of a fused one, with its bias
    /// (its part of the fused bias). LoRA pairs on `target` (the CPU's matrix) update the rows
    /// `firstRow`..< of it that this band computes.
    struct Projection {
        let matrix: VulkanMatrix
        let bias: puna_vk_buffer?
        let target: Linear
        let firstRow: Int
    }

    struct Layer {
        let attentionNorm, ffnNorm: puna_vk_buffer
        let qkv: [Projection]                    // Q, K, V: three matrices, or three bands of attn_qkv
        let queryNorm, keyNorm: puna_vk_buffer?  // [head_dim], per-head RMSNorm before RoPE
        let o: VulkanMatrix
        let gateUp: [Projection]                 // gate, up: two matrices, or two bands of a fused ffn_up
        let down: VulkanMatrix
    }
    let layers: [Layer]
    let outputNorm: puna_vk_buffer?
    let output: VulkanMatrix?

    // Activations for up to maxBatch tokens (see LanguageModel.forwardLayers for their roles).
    let x, xb, q, k, v, att, gate, up, logits: puna_vk_buffer
    let input: puna_vk_buffer        // host: token embeddings in
    let ropeTable: puna_vk_buffer    // host: (cos, sin) per token and pair
    let readback: puna_vk_buffer     // host: logits (or the residual stream) out

    /// Unmerged LoRA on the GPU: each adapter pair's factors, uploaded the first time the active
    /// set uses them. A is rank x in; B is out x rank with its rows in the base matrix's order (the
    /// Q/K rotary reordering applied once here) and the rank padded with zeros to a multiple of 8.
    struct LoRAPair {
        let weights: LoRAWeights     // held, so the identifier below cannot be reused
        let a: VulkanMatrix
        let b: VulkanMatrix
    }
    var loraPairs: [ObjectIdentifier: LoRAPair] = [:]
    var loraScratch: puna_vk_buffer? = nil    // A·x of a batch
    var loraScratchFloats = 0

    /// Queue submissions of the forward pass so far (one per `step`): how a caller can tell its
    /// work ran on the GPU.
    private(set) var submissions = 0

    /// The parts of a model's architecture the shaders do not compute (empty: the whole model can
    /// run on the GPU). A model with any of them runs on the CPU, with this in `backendNote`.
    /// Computed: RoPE in both pairings over all or the first rope_dims dims of a head, with
    /// rope_freqs / linear / LongRoPE factors and LongRoPE's attention factor; fused QKV and fused
    /// gate/up (bands of rows of one matrix); Q/K/V biases; per-head Q/K RMSNorm; heads of any size
    /// up to 256; sliding-window attention over full caches and rings; bitsandbytes NF4/FP4 (with or
    /// without double quantization) and LLM.int8 matrices.
    static func unsupportedFeatures(of m: LanguageModel) -> [String] {
        let c = m.config
        var missing: [String] = []
        // Gemma / BLOOM parts (issue 19)
        if c.norm != .rms { missing.append("LayerNorm") }
        if m.layers.contains(where: { $0.attentionPostNorm != nil || $0.ffnPostNorm != nil }) { missing.append("post-norms") }
        if c.feedForward != .swiglu { missing.append(c.feedForward == .geglu ? "GeGLU" : "GELU feed-forward") }
        if m.layers.contains(where: { $0.o.bias != nil || $0.up.bias != nil || $0.down.bias != nil || $0.gate?.bias != nil }) {
            missing.append("output/feed-forward biases")
        }
        if c.alibiMaxBias != nil { missing.append("ALiBi") }
        if c.attentionSoftcap > 0 || c.finalLogitSoftcap > 0 { missing.append("soft-capping") }
        if c.embeddingScale != 1 || m.tokenEmbeddingNorm != nil { missing.append("embedding scale/norm") }
        if c.attentionScale != nil { missing.append("a custom attention scale") }
        // One RoPE table serves every layer: layers with their own base or without the scaling differ.
        let first = m.layers.first
        if c.slidingWindowPattern > 0 || c.slidingWindowLayers != nil || c.localRopeFreqBase != nil
            || m.layers.contains(where: { $0.ropeFreqBase != first?.ropeFreqBase || $0.ropeScaled != first?.ropeScaled }) {
            missing.append("local/global layer patterns")
        }
        return missing
    }

    init(model m: LanguageModel, options: VulkanOptions) throws(PunaError) {
        let c = m.config
        let e = c.embeddingLength, qd = c.queryDimension, kvd = c.kvDimension, ff = c.feedForwardLength, vocab = c.vocabSize
        // Shapes the shaders handle: whole 32-column chunks, even KV rows, head_dim <= 256.
        guard e % 32 == 0, ff % 32 == 0, qd % 32 == 0, kvd % 2 == 0, c.headDimension <= 256, c.headDimension % 2 == 0,
              c.headCountKV > 0, c.headCount % c.headCountKV == 0, c.ropeDimensionCount <= c.headDimension else {
            throw PunaError("vulkan: model shape not supported (n_embd \(e), n_ff \(ff), head_dim \(c.headDimension) x \(c.headCount) heads; needs multiples of 32 and head_dim <= 256)")
        }
        let missing = VulkanBackend.unsupportedFeatures(of: m)
        guard missing.isEmpty else {
            throw PunaError("vulkan: the shaders do not compute \(missing.joined(separator: ", ")) of this \(c.architecture) model yet")
        }
        var requestedTier: Int32 = options.forceBaseline ? Int32(PUNA_VK_TIER_BASELINE.rawValue) : -1
        if let name = options.tier {
            requestedTier = puna_vk_tier_from_name(name)
            guard requestedTier >= 0 else {
                throw PunaError("vulkan: no shader tier '\(name)' (\(VulkanDevice.tierNames.joined(separator: ", ")))")
            }
        }
        let ctx = try VulkanContext(device: options.device, tier: requestedTier)
        context = ctx
        file = m.gguf.file
        let total = c.blockCount
        gpuLayerCount = options.gpuLayers < 0 ? total : min(options.gpuLayers, total)

        // Zero-copy where the driver imports the file mapping; else weights are copied.
        let imported = m.gguf.file.baseAddress.map { puna_vk_import_host(ctx.vk, $0, UInt64(m.gguf.file.count)) != 0 } ?? false
        var zeroCopyBytes = 0, copiedBytes = 0
        func matrix(_ l: Linear) throws(PunaError) -> VulkanMatrix {
            var b = puna_vk_buffer()
            var gpuType: Int32 = 0, zeroCopy: Int32 = 0
            guard puna_vk_upload_matrix(ctx.vk, Int32(l.type.rawValue), l.weights, Int64(l.rows), Int64(l.cols), &b, &gpuType, &zeroCopy) == 0 else {
                throw ctx.fail("uploading \(l.name) (\(l.type.name), \(l.rows) x \(l.cols))")
            }
            if zeroCopy != 0 { zeroCopyBytes += Int(b.size) } else { copiedBytes += Int(b.size) }
            var table: [Float]? = nil
            if l.type == .bnb4 {   // l.weights is the bitsandbytes descriptor (puna_bnb.h)
                let d = l.weights.assumingMemoryBound(to: puna_bnb4_weight.self).pointee
                table = Array(UnsafeBufferPointer(start: d.quant_map, count: 16))
            }
            return VulkanMatrix(buffer: b, type: gpuType, rows: l.rows, cols: l.cols, codeTable: table)
        }
        func vector(_ values: [Float]?, _ what: String) throws(PunaError) -> puna_vk_buffer? {
            guard let values else { return nil }
            return try ctx.floats(values, what)
        }
        // A matrix, or a fused one as bands of rows of the given widths (each with its part of the bias).
        func projections(_ l: Linear, widths: [Int]) throws(PunaError) -> [Projection] {
            let whole = try matrix(l)
            var parts: [Projection] = []
            var row = 0
            for w in widths {
                let bias = try vector(l.bias.map { Array($0[row..<row + w]) }, "\(l.name) bias")
                parts.append(Projection(matrix: widths.count == 1 ? whole : whole.rows(row, w), bias: bias, target: l, firstRow: row))
                row += w
            }
            return parts
        }
        var layers: [Layer] = []
        for i in 0..<gpuLayerCount {
            let l = m.layers[i]
            var qkv: [Projection]
            if let fused = l.qkv {
                qkv = try projections(fused, widths: [qd, kvd, kvd])
            } else {
                qkv = try projections(l.q!, widths: [qd])
                qkv += try projections(l.k!, widths: [kvd])
                qkv += try projections(l.v!, widths: [kvd])
            }
            var gateUp: [Projection]
            if let gate = l.gate {
                gateUp = try projections(gate, widths: [ff]) + projections(l.up, widths: [ff])
            } else {
                gateUp = try projections(l.up, widths: [ff, ff])   // gate rows first, then up rows
            }
            layers.append(Layer(attentionNorm: try ctx.floats(l.attentionNorm.weight, "blk.\(i).attn_norm"),
                                ffnNorm: try ctx.floats(l.ffnNorm.weight, "blk.\(i).ffn_norm"),
                                qkv: qkv,
                                queryNorm: try vector(l.queryNorm, "blk.\(i).attn_q_norm"),
                                keyNorm: try vector(l.keyNorm, "blk.\(i).attn_k_norm"),
                                o: try matrix(l.o), gateUp: gateUp, down: try matrix(l.down)))
        }
        self.layers = layers
        let whole = gpuLayerCount == total
        outputNorm = whole ? try ctx.floats(m.outputNorm.weight, "output_norm") : nil
        output = whole ? try matrix(m.output) : nil

        // Batch: the model's, capped so the logits of a batch fit one shader binding.
        let bindingLimit = Int(puna_vk_max_binding_bytes(ctx.vk))
        let batch = max(1, min(m.batchSize, bindingLimit / (4 * max(vocab, ff, e, qd))))
        maxBatch = batch
        x = try ctx.alloc(batch * e * 4, "activations")
        xb = try ctx.alloc(batch * e * 4, "activations")
        q = try ctx.alloc(batch * qd * 4, "activations")
        k = try ctx.alloc(batch * kvd * 4, "activations")
        v = try ctx.alloc(batch * kvd * 4, "activations")
        att = try ctx.alloc(batch * qd * 4, "activations")
        gate = try ctx.alloc(batch * ff * 4, "activations")
        up = try ctx.alloc(batch * ff * 4, "activations")
        logits = try ctx.alloc((whole ? batch * vocab : 1) * 4, "logits")
        input = try ctx.alloc(batch * e * 4, host: true, "input")
        ropeTable = try ctx.alloc(batch * max(c.ropeDimensionCount / 2, 1) * 8, host: true, "RoPE table")
        readback = try ctx.alloc(batch * max(whole ? vocab : e, 1) * 4, host: true, "read-back")

        let info = puna_vk_info(ctx.vk)!.pointee
        let device = VulkanDevice(index: Int(puna_vk_device_index(ctx.vk)), info: info)
        sharesHostMemory = device.type != "discrete"
        let tier = String(cString: puna_vk_tier_name(puna_vk_tier(ctx.vk)))
        var d = "vulkan: device \(device.index) \(device.name) (\(device.type), Vulkan \(device.apiVersion)), \(tier) tier"
        switch puna_vk_int8_fma(ctx.vk) {
        case Int32(PUNA_VK_FMA_F64.rawValue): d += " (fma in f64)"
        case Int32(PUNA_VK_FMA_UNFUSED.rawValue): d += " (fma not fused: int8 products within rounding of the CPU's)"
        default: break
        }
        d += ", subgroup \(device.subgroupSize), \(gpuLayerCount)/\(total) layers on the GPU"
        d += ", weights \(formatBytes(zeroCopyBytes)) zero-copy + \(formatBytes(copiedBytes)) copied"
        if !imported && device.type != "discrete" { d += " (no host-memory import)" }
        description = d
    }

    /// Uploads the factors of every active pair that updates a GPU matrix (before recording: an
    /// upload may run a transfer) and sizes the scratch for A·x.
    private func prepareAdapters(_ m: LanguageModel, _ adapters: AdapterSet) throws(PunaError) {
        var targets: [Linear] = []
        for l in m.layers.prefix(gpuLayerCount) { targets += l.matrices }
        if output != nil { targets.append(m.output) }
        var widest = 0
        for target in targets {
            for (w, _) in adapters.parts(for: target.name) where w.kind == .linear {
                let pair = try loraPair(w)
                widest = max(widest, pair.a.rows)
            }
        }
        if widest * maxBatch > loraScratchFloats {
            if let old = loraScratch { puna_vk_free(context.vk, old) }
            loraScratch = nil
            loraScratch = try context.alloc(widest * maxBatch * 4, dedicated: true, "LoRA scratch")
            loraScratchFloats = widest * maxBatch
        }
    }

    private func loraPair(_ w: LoRAWeights) throws(PunaError) -> LoRAPair {
        if let p = loraPairs[ObjectIdentifier(w)] { return p }
        let rank = w.rank, padded = (rank + 7) / 8 * 8
        let inputs = w.a.cols, outputs = w.b.rows
        guard w.a.rows == rank, w.b.cols == rank, inputs % 8 == 0 else {
            throw PunaError("vulkan: LoRA pair \(w.sourceA) has shapes the GPU path cannot take")
        }
        var a = [Float](repeating: 0, count: padded * inputs)
        a.withUnsafeMutableBufferPointer { p in for r in 0..<rank { w.a.decodeRow(r, into: p.baseAddress! + r * inputs) } }
        var b = [Float](repeating: 0, count: outputs * padded)
        let row = Buffer(rank)
        for i in 0..<outputs {
            w.b.decodeRow(i, into: row.p)
            let dest = w.outputRows?[i] ?? i
            for k in 0..<rank { b[dest * padded + k] = row.p[k] }
        }
        // F16 factors stay F16 (exactly); anything else goes up as F32.
        let type: GGMLType = w.a.type == .f16 && w.b.type == .f16 ? .f16 : .f32
        let pair = LoRAPair(weights: w, a: try uploadFloats(a, type, rows: padded, cols: inputs, w.sourceA),
                            b: try uploadFloats(b, type, rows: outputs, cols: padded, w.sourceB))
        loraPairs[ObjectIdentifier(w)] = pair
        return pair
    }

    private func uploadFloats(_ values: [Float], _ type: GGMLType, rows: Int, cols: Int, _ what: String) throws(PunaError) -> VulkanMatrix {
        let bytes: [UInt8]
        if type == .f16 {
            bytes = try GGMLType.f16.encode(values)
        } else {
            bytes = values.withUnsafeBytes { Array($0) }
        }
        var b = puna_vk_buffer()
        var gpuType: Int32 = 0, zeroCopy: Int32 = 0
        let rc = bytes.withUnsafeBytes {
            puna_vk_upload_matrix(context.vk, Int32(type.rawValue), $0.baseAddress, Int64(rows), Int64(cols), &b, &gpuType, &zeroCopy)
        }
        guard rc == 0 else { throw context.fail("uploading \(what)") }
        return VulkanMatrix(buffer: b, type: gpuType, rows: rows, cols: cols)
    }

    deinit {
        // Submissions are waited for, so nothing runs now, unless one timed out: then the device
        // may still read the weights, and the file mapping must outlive this process's use of it.
        if puna_vk_hung(context.vk) != 0 { _ = Unmanaged.passRetained(file) }
    }

    /// The GPU half of a KV cache, made (or remade) to match `cache`.
    func deviceCache(for cache: KVCache) throws(PunaError) -> VulkanKVCache {
        // The shaders keep keys and values as f32, f16 or q8_0, as the CPU cache does.
        let format: Int32
        switch cache.type {
        case .f32: format = Int32(PUNA_VK_KV_F32.rawValue)
        case .f16: format = Int32(PUNA_VK_KV_F16.rawValue)
        case .q8_0: format = Int32(PUNA_VK_KV_Q8_0.rawValue)
        default: throw PunaError("vulkan: KV cache type \(cache.type.name) is not supported (use f16, f32 or q8_0)")
        }
        let rows = (0..<gpuLayerCount).map { cache.ringRows[$0] > 0 ? cache.ringRows[$0] : cache.capacity }
        if let existing = cache.deviceCache, existing.context === context, existing.capacity == cache.capacity,
           existing.format == format, existing.rows == rows {
            return existing
        }
        cache.deviceCache = nil   // free the old one first
        let made = try VulkanKVCache(context: context, capacity: cache.capacity, rows: rows,
                                     kvDimension: cache.kvDimension, format: format)
        cache.deviceCache = made
        return made
    }

    /// LanguageModel.forward on the GPU (and the CPU for layers past gpuLayerCount). nil on success.
    func forward(_ m: LanguageModel, _ tokens: [Int32], cache: KVCache, logits: UnsafeMutablePointer<Float>?,
                 allLogits: Bool) -> PunaError? {
        var start = 0
        while start < tokens.count {
            let n = min(maxBatch, tokens.count - start)
            let isLast = start + n == tokens.count
            let vocab = m.config.vocabSize
            let destination: UnsafeMutablePointer<Float>? = logits.flatMap { allLogits ? $0 + start * vocab : (isLast ? $0 : nil) }
            let rows = destination == nil ? [] : (allLogits ? Array(0..<n) : [n - 1])
            do throws(PunaError) {
                try step(m, [BatchSlice(cache: cache, tokens: Array(tokens[start..<start + n]), wantsLogits: !rows.isEmpty)],
                         outputRows: rows, logits: destination, rowIndependent: false)
            } catch {
                return error
            }
            start += n
        }
        return nil
    }

    /// LanguageModel.forwardBatch on the GPU: the slices' rows stacked as the CPU stacks them, one
    /// submission per step of at most maxBatch rows (a slice that does not fit what is left of a
    /// step continues in the next, as a prompt continues in the next chunk). Writes the logits of
    /// the last row of each slice that wants them to `logits`, [wanted][n_vocab] in slice order.
    /// The products run row-independent, so a sequence's logits do not depend on what shares its
    /// steps or how its prompt is chunked (BatchScheduler's determinism).
    func forwardBatch(_ m: LanguageModel, _ slices: [BatchSlice], logits: UnsafeMutablePointer<Float>) throws(PunaError) {
        var steps: [[BatchSlice]] = [[]]
        var rows = 0
        for s in slices {
            var done = 0
            while done < s.tokens.count {
                if rows == maxBatch {
                    steps.append([])
                    rows = 0
                }
                let n = min(maxBatch - rows, s.tokens.count - done)
                let last = done + n == s.tokens.count
                steps[steps.count - 1].append(BatchSlice(cache: s.cache, tokens: Array(s.tokens[done..<done + n]),
                                                         wantsLogits: s.wantsLogits && last, adapters: s.adapters))
                done += n
                rows += n
            }
        }
        var written = 0
        for slicesOfStep in steps where !slicesOfStep.isEmpty {
            var outputRows: [Int] = []
            var row = 0
            for s in slicesOfStep {
                row += s.tokens.count
                if s.wantsLogits { outputRows.append(row - 1) }
            }
            try step(m, slicesOfStep, outputRows: outputRows, logits: logits + written * m.config.vocabSize, rowIndependent: true)
            written += outputRows.count
        }
    }

    /// One sequence's rows in a step: `count` rows from `firstRow` of the stacked matrix, at the
    /// positions after the `cache.count` already there, its GPU layers' keys and values in `device`.
    struct StepSequence {
        let cache: KVCache
        let device: VulkanKVCache
        let firstRow: Int
        let count: Int
    }

    /// Consecutive rows of a step with one adapter set (sequences with the same adapters).
    struct AdapterRun {
        let adapters: AdapterSet
        let firstRow: Int
        var count: Int
    }

    /// Runs of the rows that have adapters: rowAdapters[r] is row r's set; nil = none on any row.
    static func adapterRuns(_ rowAdapters: [AdapterSet]?) -> [AdapterRun] {
        guard let rowAdapters else { return [] }
        var runs: [AdapterRun] = []
        for (r, set) in rowAdapters.enumerated() where !set.isEmpty {
            if let last = runs.last, last.firstRow + last.count == r, last.adapters.isSame(as: set) {
                runs[runs.count - 1].count += 1
            } else {
                runs.append(AdapterRun(adapters: set, firstRow: r, count: 1))
            }
        }
        return runs
    }

    /// One command buffer over `slices` (at most maxBatch rows in all, each cache at most once,
    /// validated as LanguageModel.validateBatch does): every weight matrix once over all stacked
    /// rows; RoPE from each row's own position; the KV store and attention per sequence over its
    /// rows and its own cache; logits of `outputRows` (indices into the stacked rows) to `logits`.
    private func step(_ m: LanguageModel, _ slices: [BatchSlice], outputRows: [Int], logits: UnsafeMutablePointer<Float>?,
                      rowIndependent: Bool) throws(PunaError) {
        let c = m.config
        let e = c.embeddingLength, qd = c.queryDimension, kvd = c.kvDimension, ff = c.feedForwardLength, vocab = c.vocabSize
        let hd = c.headDimension, pairs = c.ropeDimensionCount / 2
        var sequences: [StepSequence] = []
        var tokens: [Int32] = []
        for s in slices {
            guard s.cache.layers == c.blockCount, s.cache.kvDimension == kvd else {
                throw PunaError("vulkan: this KV cache was not made by this model (use model.makeCache)")
            }
            sequences.append(StepSequence(cache: s.cache, device: try deviceCache(for: s.cache), firstRow: tokens.count, count: s.tokens.count))
            tokens += s.tokens
        }
        let n = tokens.count
        guard n > 0, n <= maxBatch, outputRows.count <= n else { throw PunaError("internal error: a GPU step of \(n) rows") }
        // Adapters of every row, as the CPU's forwardBatch gives them (nil when no row has any).
        var rowAdapters: [AdapterSet]? = nil
        if slices.contains(where: { !($0.adapters ?? m.activeAdapters).isEmpty }) {
            var all: [AdapterSet] = []
            for s in slices { all += [AdapterSet](repeating: s.adapters ?? m.activeAdapters, count: s.tokens.count) }
            rowAdapters = all
        }
        let outputAdapters = rowAdapters.map { all in outputRows.map { all[$0] } }
        let runs = VulkanBackend.adapterRuns(rowAdapters)
        let outputRuns = VulkanBackend.adapterRuns(outputAdapters)
        var prepared: [AdapterSet] = []
        for run in runs where !prepared.contains(where: { $0.isSame(as: run.adapters) }) {
            try prepareAdapters(m, run.adapters)
            prepared.append(run.adapters)
        }
        let vk = context.vk
        let eps = c.rmsNormEpsilon
        let matmulFlags = rowIndependent ? Int32(PUNA_VK_MATMUL_ROW_INDEPENDENT.rawValue) : 0

        let embeddings = context.hostFloats(input)
        for (t, token) in tokens.enumerated() { m.tokenEmbedding.decodeRow(Int(token), into: embeddings + t * e) }
        try m.addEmbeddingAdapterDeltas(tokens, into: embeddings, adapters: rowAdapters)   // embedding LoRA, on the CPU
        // (cos, sin) of every row at its sequence's position: one table for every layer
        // (unsupportedFeatures refuses layers that differ), with the factors for the sequence's
        // cache length (LongRoPE: short or long) and the attention factor.
        if let layer = m.layers.first {
            let table = context.hostFloats(ropeTable)
            for s in sequences {
                let factors = layer.ropeScaled ? m.ropeFactors(context: s.cache.capacity) : nil
                withOptionalBuffer(factors) {
                    puna_vk_rope_table(table + s.firstRow * pairs * 2, Int32(s.count), Int32(s.cache.count), Int32(c.ropeDimensionCount),
                                       layer.ropeFreqBase, $0, c.ropeAttentionFactor)
                }
            }
        }
        let neox: Int32 = c.ropeStyle == .halves ? 1 : 0

        func mm(_ w: VulkanMatrix, _ input: puna_vk_buffer, _ inputOffset: Int, _ out: puna_vk_buffer, _ outputOffset: Int = 0,
                tokens: Int, accumulate: Bool, alpha: Float = 1) {
            let flags = matmulFlags | (accumulate ? Int32(PUNA_VK_MATMUL_ACCUMULATE.rawValue) : 0)
            withOptionalBuffer(w.codeTable) {
                puna_vk_matmul(vk, w.type, w.buffer, $0, UInt32(w.rows), UInt32(w.cols), input, UInt32(inputOffset), out,
                               UInt32(outputOffset), UInt32(tokens), alpha, flags)
            }
        }
        // out += s·B(A·input) for every pair that updates `target` in each run's adapter set, over
        // that run's rows: A·input once, then each band of B's rows into the buffer that holds
        // those rows of the target's output ([rows][band rows]).
        func lora(_ target: Linear, _ input: puna_vk_buffer, _ bands: [(out: puna_vk_buffer, firstRow: Int, rows: Int)],
                  runs: [AdapterRun]) {
            guard let scratch = loraScratch else { return }
            for run in runs {
                for (w, scale) in run.adapters.parts(for: target.name) where w.kind == .linear {
                    guard let pair = loraPairs[ObjectIdentifier(w)] else { continue }
                    mm(pair.a, input, run.firstRow * pair.a.cols, scratch, tokens: run.count, accumulate: false)
                    for band in bands {
                        let b = band.rows == pair.b.rows ? pair.b : pair.b.rows(band.firstRow, band.rows)
                        mm(b, scratch, 0, band.out, run.firstRow * band.rows, tokens: run.count, accumulate: true, alpha: scale)
                    }
                }
            }
        }
        // outs[i] = parts[i](input) (+ LoRA) (+ bias), in Linear.forward's order.
        func project(_ parts: [Projection], _ input: puna_vk_buffer, into outs: [puna_vk_buffer]) {
            for (p, out) in zip(parts, outs) { mm(p.matrix, input, 0, out, tokens: n, accumulate: false) }
            var targets: [ObjectIdentifier] = []
            for p in parts where !targets.contains(ObjectIdentifier(p.target)) {
                targets.append(ObjectIdentifier(p.target))
                let bands = zip(parts, outs).filter { $0.0.target === p.target }.map { (out: $0.1, firstRow: $0.0.firstRow, rows: $0.0.matrix.rows) }
                lora(p.target, input, bands, runs: runs)
            }
            for (p, out) in zip(parts, outs) {
                if let bias = p.bias { puna_vk_bias(vk, bias, out, UInt32(p.matrix.rows), UInt32(n)) }
            }
        }

        guard puna_vk_begin(vk) == 0 else { throw context.fail("begin") }
        puna_vk_copy(vk, input, 0, x, 0, UInt64(n * e * 4))
        for (l, layer) in layers.enumerated() {
            let cpuLayer = m.layers[l]
            // attention: Q, K, V (three matrices or bands of one), per-head norms, RoPE over all rows
            puna_vk_rmsnorm(vk, layer.attentionNorm, x, 0, xb, 0, UInt32(e), UInt32(n), eps)
            project(layer.qkv, xb, into: [q, k, v])
            if let norm = layer.queryNorm { puna_vk_rmsnorm(vk, norm, q, 0, q, 0, UInt32(hd), UInt32(n * c.headCount), eps) }
            if let norm = layer.keyNorm { puna_vk_rmsnorm(vk, norm, k, 0, k, 0, UInt32(hd), UInt32(n * c.headCountKV), eps) }
            puna_vk_rope(vk, ropeTable, q, UInt32(n), UInt32(c.headCount), UInt32(hd), UInt32(pairs), neox)
            puna_vk_rope(vk, ropeTable, k, UInt32(n), UInt32(c.headCountKV), UInt32(hd), UInt32(pairs), neox)
            // the cache and attention: each sequence over its own rows and cache
            for s in sequences {
                let ring = UInt32(s.cache.ringRows[l]), pos0 = UInt32(s.cache.count), format = s.device.format
                puna_vk_kv_store(vk, k, v, UInt32(s.firstRow * kvd), s.device.keys[l], s.device.values[l], UInt32(s.count), UInt32(kvd),
                                 pos0, format, ring)
                puna_vk_attention(vk, q, UInt32(s.firstRow * qd), s.device.keys[l], s.device.values[l], att, UInt32(s.firstRow * qd),
                                  UInt32(s.count), pos0, UInt32(c.headCount), UInt32(c.headCountKV), UInt32(hd), format,
                                  UInt32(cpuLayer.attentionWindow), ring)
            }
            mm(layer.o, att, 0, x, tokens: n, accumulate: true)   // x += o(att)
            lora(cpuLayer.o, att, [(x, 0, e)], runs: runs)
            // feed-forward (SwiGLU): gate and up as two matrices or two bands of one
            puna_vk_rmsnorm(vk, layer.ffnNorm, x, 0, xb, 0, UInt32(e), UInt32(n), eps)
            project(layer.gateUp, xb, into: [gate, up])
            puna_vk_swiglu(vk, gate, up, UInt32(n * ff))
            mm(layer.down, gate, 0, x, tokens: n, accumulate: true)   // x += down(…)
            lora(cpuLayer.down, gate, [(x, 0, e)], runs: runs)
        }
        let wanted = outputRows.count
        if let output, let outputNorm {
            if wanted > 0 {
                // The wanted rows, normed, gathered into xb ([wanted][e]): one dispatch per run of
                // consecutive rows, so the output matrix is read once for all of them.
                var i = 0
                while i < wanted {
                    var j = i + 1
                    while j < wanted && outputRows[j] == outputRows[j - 1] + 1 { j += 1 }
                    puna_vk_rmsnorm(vk, outputNorm, x, UInt32(outputRows[i] * e), xb, UInt32(i * e), UInt32(e), UInt32(j - i), eps)
                    i = j
                }
                mm(output, xb, 0, self.logits, tokens: wanted, accumulate: false)
                lora(m.output, xb, [(self.logits, 0, vocab)], runs: outputRuns)
                puna_vk_copy(vk, self.logits, 0, readback, 0, UInt64(wanted * vocab * 4))
            }
        } else {
            puna_vk_copy(vk, x, 0, readback, 0, UInt64(n * e * 4))
        }
        guard puna_vk_submit(vk) == 0 else { throw context.fail("running the model") }
        submissions += 1
        // The CPU caches' record of the positions written (their sliding-window rings refuse
        // rewinds past what they keep from it).
        for s in sequences { s.cache.noteWritten(upTo: s.cache.count + s.count) }

        if output != nil {
            for s in sequences { s.cache.count += s.count }
            if let logits, wanted > 0 { logits.update(from: context.hostFloats(readback), count: wanted * vocab) }
            return
        }
        // Partial offload: the remaining layers and the output on the CPU, as LanguageModel.forwardBatch.
        // (The CPU caches keep room for every layer; the GPU layers' rows are never touched, so
        // those pages are never backed by memory.)
        let xs = Buffer(n * e)
        xs.p.update(from: context.hostFloats(readback), count: n * e)
        let cpuSequences = sequences.map { LanguageModel.SequenceRows(cache: $0.cache, firstRow: $0.firstRow, count: $0.count) }
        try m.forwardLayers(xs, rows: n, sequences: cpuSequences, layers: gpuLayerCount..<m.layers.count, adapters: rowAdapters)
        for s in sequences { s.cache.count += s.count }
        if let logits, wanted > 0 { try m.forwardOutput(xs, rows: outputRows, logits: logits, adapters: outputAdapters) }
    }
}

extension LanguageModel {
    /// Whether the forward pass runs on a Vulkan device (useVulkan succeeded).
    public var usesVulkan: Bool { vulkan != nil }

    /// Queue submissions of forward passes on the Vulkan device so far (0 on the CPU): one per
    /// `evaluate` chunk and per batched step of up to the backend's batch of rows.
    public var vulkanSubmissions: Int { vulkan?.submissions ?? 0 }

    /// Dispatches recorded so far with the shader variants whose name starts with `prefix`
    /// ("matmul1_", "matmul_", "matvec_", …; 0 on the CPU): which shaders a step took.
    public func vulkanDispatches(_ prefix: String) -> Int {
        guard let vulkan else { return 0 }
        return Int(puna_vk_dispatches(vulkan.context.vk, prefix))
    }

    /// Runs the forward pass on a Vulkan device from now on (`evaluate`, and so `Generator`).
    /// Call it after adapters are merged: weights are uploaded here. A cache's GPU layers keep their
    /// keys and values on the device (made at the cache's first use). Without `options.required`,
    /// a failure leaves the model on the CPU and says why in `backendNote`; with it, it is thrown.
    public func useVulkan(_ options: VulkanOptions) throws(PunaError) {
        vulkan = nil
        backendNote = nil
        guard options.gpuLayers != 0 else { return }
        do throws(PunaError) {
            let backend = try VulkanBackend(model: self, options: options)
            vulkan = backend
            backendNote = backend.description
        } catch {
            if options.required { throw error }
            backendNote = "\(error.message); running on the CPU"
        }
    }
}

/// A SPIR-V module compiled into this binary by scripts/compile-shaders.
public struct VulkanShader {
    public let name: String
    /// The tier needing it (enum puna_vk_tier): 0 baseline (Vulkan 1.1 core only), 1 subgroup
    /// arithmetic, 2 integer dot product.
    public let tier: Int
    public let words: [UInt32]

    public static var all: [VulkanShader] {
        var shaders: [VulkanShader] = []
        for i in 0..<puna_vk_shader_count() {
            var count: UInt32 = 0
            guard let code = puna_vk_shader_code(i, &count) else { continue }
            shaders.append(VulkanShader(name: String(cString: puna_vk_shader_name(i)), tier: Int(puna_vk_shader_tier(i)),
                                        words: Array(UnsafeBufferPointer(start: code, count: Int(count)))))
        }
        return shaders
    }
}
