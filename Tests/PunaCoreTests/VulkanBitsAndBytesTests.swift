import CPuna
import CPunaVulkan
import Foundation
import PunaCore
import XCTest

/// bitsandbytes weights on the Vulkan backend (GPU layout: Sources/CPunaVulkan/bnb_layout.h), in
/// both shader tiers, on Mesa's lavapipe in CI:
/// - the shaders against the CPU's definition (puna_bnb.h through the reference kernels: rows
///   dequantized exactly, then f32 dot products) on synthetic NF4 and FP4 matrices with and without
///   double quantization and on int8 ones: matrix × vector and the tiled prompt shader, the whole
///   matrix and a band of rows, accumulate with a scale; the layout's size; bad input refused;
/// - the three fixture folders (NF4 double-quant, FP4, int8) end to end: logits against
///   transformers and the CPU, 16 greedy tokens equal to the CPU's, the PEFT adapter trained on
///   each base unmerged against PEFT, and `puna run --backend vulkan` on a folder.
final class VulkanBitsAndBytesTests: XCTestCase {
    typealias Tier = VulkanTests.Tier

    static let bnb4 = Int32(PUNA_TYPE_BNB4)
    static let int8 = Int32(PUNA_TYPE_BNB_INT8)
    static let root = Fixtures.root.appendingPathComponent("hf")
    static let folders = ["llama-nf4-dq", "llama-fp4", "llama-int8"]
    /// The GPU and the CPU's reference kernels compute the same f32 products of the same
    /// dequantized weights; only the order of the sums differs, as on F32 files (1e-3 there).
    static let cpuTolerance: Float = 1e-3
    /// The shaders alone against the definition on one matrix: f32 rounding of 320-term sums.
    static let kernelTolerance: Float = 1e-5

    /// The project's tolerances against transformers: ≤ 5-bit weights 8e-2, 8-bit 6e-2 of max|logit|.
    func bound(_ name: String) -> Float { name.hasSuffix("int8") ? 6e-2 : 8e-2 }

    override func tearDown() {
        puna_kernels_set_reference_only(0)
        super.tearDown()
    }

    // MARK: - the shaders against the definition

    /// bitsandbytes' FP4 code book, as transformers writes it in `quant_map` (the llama-fp4 fixture's).
    static let fp4Map: [Float] = [0, 0.0052083334885537624, 0.6666666865348816, 1, 0.3333333432674408, 0.5, 0.1666666716337204, 0.25,
                                  0, -0.0052083334885537624, -0.6666666865348816, -1, -0.3333333432674408, -0.5, -0.1666666716337204, -0.25]

    enum Kind: String, CaseIterable { case nf4, nf4DoubleQuant = "nf4-dq", fp4, fp4DoubleQuant = "fp4-dq", int8 }

    /// Random weights of a kind: every code, int8 value and absmax code occurs. Double quantization
    /// nests 256 blocks (what transformers writes) for NF4 and 3 (no power of two) for FP4.
    func weights(_ kind: Kind, rows: Int, cols: Int, rng: inout KernelTests.Rng) -> BnbKernelTests.Weights {
        let w = BnbKernelTests.Weights()
        if kind == .int8 {
            w.type = Self.int8
            let q = (0..<(rows * cols)).map { _ in Int8(truncatingIfNeeded: rng.next()) }
            let scb = (0..<rows).map { _ in 0.05 + abs(rng.float(3)) }
            w.desc8.pointee = puna_bnb_int8_weight(weight: w.copy(q), row_scale: w.copy(scb))
            return w
        }
        let blocks = rows * cols / 64
        var d = puna_bnb4_weight()
        d.packed = UnsafePointer(w.copy((0..<(rows * cols / 2)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }))
        d.quant_map = UnsafePointer(w.copy(kind == .nf4 || kind == .nf4DoubleQuant ? BnbKernelTests.nf4Map : Self.fp4Map))
        d.blocksize = 64
        if kind == .nf4 || kind == .fp4 {
            d.absmax = UnsafePointer(w.copy((0..<blocks).map { _ in 0.01 + abs(rng.float(2)) }))
        } else {
            let nested = kind == .nf4DoubleQuant ? 256 : 3
            d.absmax_codes = UnsafePointer(w.copy((0..<blocks).map { _ in UInt8(truncatingIfNeeded: rng.next()) }))
            d.nested_quant_map = UnsafePointer(w.copy((0..<256).map { _ in rng.float() }))
            d.nested_absmax = UnsafePointer(w.copy((0..<((blocks + nested - 1) / nested)).map { _ in 0.01 + abs(rng.float(0.2)) }))
            d.nested_blocksize = Int64(nested)
            d.nested_offset = 0.4
        }
        w.desc4.pointee = d
        return w
    }

    /// A context of one tier; fails the test when it cannot be made or has another tier.
    func context(_ tier: Tier, device: VulkanDevice) throws -> OpaquePointer {
        var message = [CChar](repeating: 0, count: 512)
        let vk = message.withUnsafeMutableBufferPointer { puna_vk_create(-1, tier.index, $0.baseAddress, 512) }
        guard let vk else { throw PunaError(message.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }) }
        XCTAssertEqual(puna_vk_tier(vk), tier.index, "\(tier)")
        return vk
    }

    func error(_ vk: OpaquePointer) -> String { String(cString: puna_vk_error(vk)) }

    /// y = alpha * W[first..<first+count] · x (+ y when accumulate) on the GPU, read back.
    func gpuProduct(_ vk: OpaquePointer, _ type: Int32, _ w: puna_vk_buffer, table: [Float]?, cols: Int, first: Int, count: Int,
                    _ x: [Float], tokens: Int, into y: puna_vk_buffer, alpha: Float = 1, accumulate: Bool = false) throws -> [Float] {
        let rowBytes = puna_vk_matrix_bytes(type, 1, Int64(cols))
        var part = w
        part.offset += UInt64(first) * rowBytes
        part.size = UInt64(count) * rowBytes
        var xb = puna_vk_buffer()
        XCTAssertEqual(puna_vk_alloc(vk, UInt64(x.count * 4), Int32(PUNA_VK_MEMORY_DEVICE.rawValue), 0, &xb), 0, error(vk))
        XCTAssertEqual(x.withUnsafeBytes { puna_vk_write(vk, xb, 0, $0.baseAddress, UInt64($0.count)) }, 0, error(vk))
        XCTAssertEqual(puna_vk_begin(vk), 0, error(vk))
        if let table {
            puna_vk_matmul(vk, type, part, table, UInt32(count), UInt32(cols), xb, 0, y, 0, UInt32(tokens), alpha, accumulate ? 1 : 0)
        } else {
            puna_vk_matmul(vk, type, part, nil, UInt32(count), UInt32(cols), xb, 0, y, 0, UInt32(tokens), alpha, accumulate ? 1 : 0)
        }
        guard puna_vk_submit(vk) == 0 else { throw PunaError("vulkan: \(error(vk))") }
        let out = try XCTUnwrap(puna_vk_host_pointer(vk, y)).assumingMemoryBound(to: Float.self)
        return Array(UnsafeBufferPointer(start: out, count: count * tokens))
    }

    /// Every kind, one token (matrix × vector) and 3 and 40 tokens (the 32 × 32 tiles of the prompt
    /// shader, a partial one included), the whole matrix and rows 5..<60 (a band whose first byte is
    /// not at the binding alignment), then the same band accumulated at scale 0.5: within 1e-5 of
    /// max|y| of the CPU's reference kernels, in both tiers.
    func testShadersMatchTheCPUDefinitionInBothTiers() throws {
        let device = try requireDevice()
        let rows = 71, cols = 320   // 5 blocks of 64 per row; 355 blocks: two nested blocks of 256
        let pool = puna_pool_create(1)!
        defer { puna_pool_destroy(pool) }
        var report: [String] = []
        for tier in Tier.available(device) {
            let vk = try context(tier, device: device)
            defer { puna_vk_destroy(vk) }
            var rng = KernelTests.Rng(state: 0xB17_5A4D)
            for kind in Kind.allCases {
                let w = weights(kind, rows: rows, cols: cols, rng: &rng)
                let table = w.type == Self.bnb4 ? Array(UnsafeBufferPointer(start: w.desc4.pointee.quant_map, count: 16)) : nil
                var buffer = puna_vk_buffer()
                var gpuType: Int32 = -1, zeroCopy: Int32 = -1
                XCTAssertEqual(puna_vk_upload_matrix(vk, w.type, w.pointer, Int64(rows), Int64(cols), &buffer, &gpuType, &zeroCopy), 0,
                               "\(kind): \(error(vk))")
                XCTAssertEqual(gpuType, w.type, "\(kind): the shaders read the bitsandbytes layout, not a decoded copy")
                XCTAssertEqual(zeroCopy, 0, "\(kind)")
                XCTAssertEqual(buffer.size, puna_vk_matrix_bytes(w.type, Int64(rows), Int64(cols)), "\(kind)")
                for tokens in [1, 3, 40] {
                    let x = rng.floats(tokens * cols, 2)
                    puna_kernels_set_reference_only(1)
                    var cpu = [Float](repeating: .nan, count: rows * tokens)
                    let rc = cpu.withUnsafeMutableBufferPointer {
                        puna_matmul(pool, w.type, w.pointer, Int64(rows), Int64(cols), x, Int64(tokens), $0.baseAddress)
                    }
                    puna_kernels_set_reference_only(0)
                    XCTAssertEqual(rc, 0)
                    var y = puna_vk_buffer()
                    XCTAssertEqual(puna_vk_alloc(vk, UInt64(rows * tokens * 4), Int32(PUNA_VK_MEMORY_HOST.rawValue), 0, &y), 0, error(vk))
                    let whole = try gpuProduct(vk, w.type, buffer, table: table, cols: cols, first: 0, count: rows, x, tokens: tokens, into: y)
                    let d = relative(whole, cpu, scale: cpu)
                    XCTAssertLessThanOrEqual(d, Self.kernelTolerance, "\(tier) \(kind) \(tokens) tokens")
                    // Rows 5..<60 as a band (y[t][r] for the band's rows), then += 0.5 × the same.
                    let first = 5, count = 55
                    let bandCPU = (0..<tokens).flatMap { t in cpu[(t * rows + first)..<(t * rows + first + count)] }
                    let band = try gpuProduct(vk, w.type, buffer, table: table, cols: cols, first: first, count: count, x, tokens: tokens, into: y)
                    let dBand = relative(band, bandCPU, scale: bandCPU)
                    XCTAssertLessThanOrEqual(dBand, Self.kernelTolerance, "\(tier) \(kind) \(tokens) tokens, band")
                    let accumulated = try gpuProduct(vk, w.type, buffer, table: table, cols: cols, first: first, count: count, x, tokens: tokens,
                                                     into: y, alpha: 0.5, accumulate: true)
                    let dAcc = relative(accumulated, bandCPU.map { $0 * 1.5 }, scale: bandCPU)
                    XCTAssertLessThanOrEqual(dAcc, Self.kernelTolerance, "\(tier) \(kind) \(tokens) tokens, accumulated")
                    report.append("\(tier.rawValue) \(kind.rawValue) \(tokens) token(s): whole \(d), band \(dBand), accumulated \(dAcc)")
                }
            }
        }
        print("Vulkan bitsandbytes shaders vs the CPU reference kernels, max|diff|/max|y|:\n" + report.joined(separator: "\n"))
    }

    /// The GPU layout's size (bnb_layout.h): 36 bytes per 64 4-bit weights (4.5 bits), cols + 4
    /// per int8 row; descriptors the shaders cannot take and a 4-bit product without its code table
    /// are errors, not wrong numbers.
    func testLayoutSizeAndRefusals() throws {
        XCTAssertEqual(puna_vk_matrix_bytes(Self.bnb4, 4096, 4096), 4096 * 4096 / 64 * 36)
        XCTAssertEqual(puna_vk_matrix_bytes(Self.bnb4, 1, 96), 0, "96 columns are no whole number of blocks of 64")
        XCTAssertEqual(puna_vk_matrix_bytes(Self.int8, 4096, 11008), 4096 * (11008 + 4))
        let device = try requireDevice()
        var rng = KernelTests.Rng(state: 7)
        let w = weights(.nf4, rows: 4, cols: 128, rng: &rng)
        w.desc4.pointee.blocksize = 32
        var buffer = puna_vk_buffer()
        var gpuType: Int32 = 0, zeroCopy: Int32 = 0
        let vk = try context(.baseline, device: device)
        XCTAssertEqual(puna_vk_upload_matrix(vk, w.type, w.pointer, 4, 128, &buffer, &gpuType, &zeroCopy), -1)
        XCTAssertTrue(error(vk).contains("blocks of 64"), error(vk))
        puna_vk_destroy(vk)

        w.desc4.pointee.blocksize = 64
        let vk2 = try context(.baseline, device: device)
        defer { puna_vk_destroy(vk2) }
        XCTAssertEqual(puna_vk_upload_matrix(vk2, w.type, w.pointer, 4, 128, &buffer, &gpuType, &zeroCopy), 0, error(vk2))
        var y = puna_vk_buffer()
        XCTAssertEqual(puna_vk_alloc(vk2, 16, Int32(PUNA_VK_MEMORY_HOST.rawValue), 0, &y), 0)
        XCTAssertThrowsError(try gpuProduct(vk2, w.type, buffer, table: nil, cols: 128, first: 0, count: 4, [Float](repeating: 1, count: 128),
                                            tokens: 1, into: y)) { e in
            XCTAssertTrue((e as! PunaError).message.contains("need their code table"), "\(e)")
        }
    }

    // MARK: - the fixture folders

    func path(_ name: String) -> String { Self.root.appendingPathComponent(name).path }

    func cpuLogits(_ model: LanguageModel, _ tokens: [Int32], cacheType: GGMLType, referenceKernels: Bool = true) throws -> [Float] {
        puna_kernels_set_reference_only(referenceKernels ? 1 : 0)
        defer { puna_kernels_set_reference_only(0) }
        return try model.evaluate(tokens, cache: model.makeCache(contextLength: 64, type: cacheType), allLogits: true)
    }

    /// Each folder in each tier: logits (f32 and f16 caches) against transformers on the same
    /// checkpoint and against the CPU, 16 greedy tokens equal to the CPU's (reference kernels: the
    /// GPU's arithmetic) and to transformers' where the manifest has them, and the PEFT adapter
    /// trained on that base, unmerged on the GPU, against PEFT and the CPU; switching it off gives
    /// the base's logits again.
    func testFoldersMatchTransformersCPUAndPEFTInBothTiers() throws {
        let device = try requireDevice()
        let manifest = try Fixtures.json(Self.root.appendingPathComponent("manifest.json"))
        let tokens = try XCTUnwrap(manifest["reference_tokens"] as? [Int]).map { Int32($0) }
        let prompt = try XCTUnwrap(manifest["prompt_tokens"] as? [Int]).map { Int32($0) }
        let folders = try XCTUnwrap(manifest["folders"] as? [String: [String: Any]])
        let peftRefs = try XCTUnwrap(folders["lora-llama"]?["references"] as? [String: [String: Any]])
        let lora = path("lora-llama")
        var report: [String] = []
        for name in Self.folders {
            let reference = try XCTUnwrap(folders[name]?["reference"] as? [String: Any])
            let expected = try Fixtures.floats(Self.root.appendingPathComponent(try XCTUnwrap(reference["logits"] as? String)))
            let peft = try Fixtures.floats(Self.root.appendingPathComponent(try XCTUnwrap(peftRefs[name]?["logits"] as? String)))
            let cpu = try LanguageModel(path: path(name), options: ModelOptions(threads: 2))
            XCTAssertTrue(cpu.gguf.tensors.contains { $0.type.isBitsAndBytes }, name)
            let cpuF32 = try cpuLogits(cpu, tokens, cacheType: .f32)
            let cpuF16 = try cpuLogits(cpu, tokens, cacheType: .f16)
            let cpuFast = try cpuLogits(cpu, tokens, cacheType: .f32, referenceKernels: false)
            puna_kernels_set_reference_only(1)
            let cpuGreedy = try Fixtures.greedy(cpu, prompt, count: 16)
            puna_kernels_set_reference_only(0)
            let cpuFastGreedy = try Fixtures.greedy(cpu, prompt, count: 16)
            let adapted = try LanguageModel(path: path(name), options: ModelOptions(threads: 2))
            adapted.activeAdapters = AdapterSet([(try LoRAAdapter.load(path: lora, for: adapted), 1)])
            let cpuAdapted = try cpuLogits(adapted, tokens, cacheType: .f32)
            report.append("\(name) CPU: reference kernels vs transformers \(relative(cpuF32, expected, scale: expected)), "
                          + "default kernels vs transformers \(relative(cpuFast, expected, scale: expected)); with the adapter vs PEFT "
                          + "\(relative(cpuAdapted, peft, scale: peft))")

            for tier in Tier.available(device) {
                let gpu = try LanguageModel(path: path(name), options: ModelOptions(threads: 2))
                try gpu.useVulkan(VulkanOptions(tier: tier.rawValue, required: true))
                XCTAssertTrue(gpu.usesVulkan, name)
                let note = try XCTUnwrap(gpu.backendNote)
                XCTAssertTrue(note.contains(", \(tier.rawValue) tier"), note)
                XCTAssertTrue(note.contains("2/2 layers on the GPU"), note)
                let gpuF32 = try gpu.evaluate(tokens, cache: gpu.makeCache(contextLength: 64, type: .f32), allLogits: true)
                let gpuF16 = try gpu.evaluate(tokens, cache: gpu.makeCache(contextLength: 64, type: .f16), allLogits: true)
                let vsTransformers = relative(gpuF32, expected, scale: expected)
                let vsCPU = relative(gpuF32, cpuF32, scale: cpuF32)
                let vsCPUf16 = relative(gpuF16, cpuF16, scale: cpuF16)
                let vsFast = relative(gpuF32, cpuFast, scale: cpuFast)
                XCTAssertLessThanOrEqual(vsTransformers, bound(name), "\(name) \(tier) vs transformers")
                XCTAssertLessThanOrEqual(vsCPU, Self.cpuTolerance, "\(name) \(tier) vs the CPU")
                XCTAssertLessThanOrEqual(vsCPUf16, Self.cpuTolerance, "\(name) \(tier) vs the CPU, f16 cache")
                // The CPU's default kernels quantize activations to 8 bits: the quantized tolerance.
                XCTAssertLessThanOrEqual(vsFast, bound(name), "\(name) \(tier) vs the CPU's default kernels")

                let greedy = try Fixtures.greedy(gpu, prompt, count: 16)
                XCTAssertEqual(greedy, cpuGreedy, "\(name) \(tier): greedy tokens")
                // For the report: how far the CPU's default kernels (8-bit activations) and
                // transformers (where the manifest has its tokens) agree with them.
                let sameAsDefault = zip(greedy, cpuFastGreedy).prefix { $0 == $1 }.count
                let transformersGreedy = (reference["greedy_tokens"] as? [Int])?.map { Int32($0) }
                let sameAsTransformers = transformersGreedy.map { t in zip(greedy, t).prefix { $0 == $1 }.count }
                // f32 activations follow transformers' own greedy tokens where the manifest has them
                // (NF4-DQ; its closest top-2 margin is 4.6e-3 of a logit, the GPU's error ~1e-5).
                if let t = transformersGreedy { XCTAssertEqual(greedy, Array(t.prefix(16)), "\(name) \(tier): greedy tokens vs transformers") }

                gpu.activeAdapters = AdapterSet([(try LoRAAdapter.load(path: lora, for: gpu), 1)])
                let withAdapter = try gpu.evaluate(tokens, cache: gpu.makeCache(contextLength: 64, type: .f32), allLogits: true)
                let vsPEFT = relative(withAdapter, peft, scale: peft)
                let vsCPUAdapted = relative(withAdapter, cpuAdapted, scale: cpuAdapted)
                let moved = relative(withAdapter, gpuF32, scale: gpuF32)
                XCTAssertLessThanOrEqual(vsPEFT, bound(name), "\(name) \(tier): adapter vs PEFT")
                XCTAssertLessThanOrEqual(vsCPUAdapted, Self.cpuTolerance, "\(name) \(tier): adapter vs the CPU")
                XCTAssertGreaterThan(moved, 5 * bound(name), "\(name) \(tier): the adapter barely changes the logits")
                gpu.activeAdapters = .none
                let off = try gpu.evaluate(tokens, cache: gpu.makeCache(contextLength: 64, type: .f32), allLogits: true)
                XCTAssertEqual(off, gpuF32, "\(name) \(tier): adapter switched off")

                report.append("\(name) \(tier.rawValue): vs transformers \(vsTransformers), vs CPU \(vsCPU) (f16 cache \(vsCPUf16)), "
                              + "vs CPU default kernels \(vsFast), 16 greedy tokens = CPU: \(greedy == cpuGreedy) (first \(sameAsDefault) "
                              + "= CPU default kernels\(sameAsTransformers.map { ", first \($0) = transformers" } ?? "")); "
                              + "adapter vs PEFT \(vsPEFT), vs CPU \(vsCPUAdapted), moves the logits by \(moved)")
            }
        }
        print("Vulkan on bitsandbytes folders, max|diff|/max|logit|:\n" + report.joined(separator: "\n"))
    }

    /// `puna run --backend vulkan` on a bitsandbytes folder runs on the GPU (no CPU fallback note).
    func testCLIRunsAFolderOnTheGPU() throws {
        _ = try requireDevice()
        let (status, text, err) = try Fixtures.runPuna(["run", "-m", path("llama-nf4-dq"), "-p", "You may convey", "-n", "8", "--temp", "0",
                                                        "--backend", "vulkan"])
        XCTAssertEqual(status, 0, err)
        XCTAssertTrue(err.contains("vulkan: device"), err)
        XCTAssertFalse(err.contains("running on the CPU"), err)
        XCTAssertFalse(text.isEmpty)
    }
}
