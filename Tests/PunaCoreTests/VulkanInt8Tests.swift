import CPuna
import CPunaVulkan
import Foundation
import PunaCore
import XCTest

/// The int8 tier (VK_KHR_shader_integer_dot_product): quantized weights times activations
/// quantized on the GPU to 8-bit blocks, computed as the CPU kernels define it
/// (Sources/CPuna/kernels_internal.h), so each product must carry the CPU kernels' bits; and how
/// tiers are chosen, forced and refused.
final class VulkanInt8Tests: XCTestCase {
    static let types: [(name: String, type: puna_type)] = [
        ("q4_0", PUNA_TYPE_Q4_0), ("q4_1", PUNA_TYPE_Q4_1), ("q5_0", PUNA_TYPE_Q5_0), ("q5_1", PUNA_TYPE_Q5_1),
        ("q8_0", PUNA_TYPE_Q8_0), ("q4_K", PUNA_TYPE_Q4_K), ("q5_K", PUNA_TYPE_Q5_K), ("q6_K", PUNA_TYPE_Q6_K),
    ]

    func typeInfo(_ type: puna_type) -> puna_type_info {
        withUnsafePointer(to: puna_type_table) {
            $0.withMemoryRebound(to: puna_type_info.self, capacity: Int(PUNA_TYPE_COUNT.rawValue)) { $0[Int(type.rawValue)] }
        }
    }

    func error(_ vk: OpaquePointer) -> String { String(cString: puna_vk_error(vk)) }

    func context(_ tier: Int32) throws -> OpaquePointer {
        var message = [CChar](repeating: 0, count: 512)
        let vk = message.withUnsafeMutableBufferPointer { puna_vk_create(-1, tier, $0.baseAddress, 512) }
        guard let vk else { throw PunaError(message.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }) }
        XCTAssertEqual(puna_vk_tier(vk), tier)
        return vk
    }

    /// Random weights of `type` through Puna's encoder.
    func weights(_ type: puna_type, rows: Int, cols: Int, rng: inout KernelTests.Rng) -> [UInt8] {
        let info = typeInfo(type)
        var blocks = [UInt8](repeating: 0, count: rows * cols / Int(info.block_size) * Int(info.type_size))
        let values = rng.floats(rows * cols)
        values.withUnsafeBufferPointer { v in blocks.withUnsafeMutableBytes { info.encode(v.baseAddress, $0.baseAddress, Int64(values.count)) } }
        return blocks
    }

    /// y = alpha * W[first..<first+count] · x (+ y) on the GPU for `tokens` tokens, read back.
    func gpuProduct(_ vk: OpaquePointer, _ type: Int32, _ w: puna_vk_buffer, cols: Int, first: Int, count: Int, _ x: [Float],
                    tokens: Int, into y: puna_vk_buffer, alpha: Float = 1, accumulate: Bool = false) throws -> [Float] {
        let rowBytes = puna_vk_matrix_bytes(type, 1, Int64(cols))
        var part = w
        part.offset += UInt64(first) * rowBytes
        part.size = UInt64(count) * rowBytes
        var xb = puna_vk_buffer()
        XCTAssertEqual(puna_vk_alloc(vk, UInt64(x.count * 4), Int32(PUNA_VK_MEMORY_DEVICE.rawValue), 0, &xb), 0, error(vk))
        XCTAssertEqual(x.withUnsafeBytes { puna_vk_write(vk, xb, 0, $0.baseAddress, UInt64($0.count)) }, 0, error(vk))
        XCTAssertEqual(puna_vk_begin(vk), 0, error(vk))
        puna_vk_matmul(vk, type, part, nil, UInt32(count), UInt32(cols), xb, 0, y, 0, UInt32(tokens), alpha, accumulate ? 1 : 0)
        guard puna_vk_submit(vk) == 0 else { throw PunaError("vulkan: \(error(vk))") }
        let out = try XCTUnwrap(puna_vk_host_pointer(vk, y)).assumingMemoryBound(to: Float.self)
        return Array(UnsafeBufferPointer(start: out, count: count * tokens))
    }

    /// Every served type against the CPU's default (quantized-activation) kernels, bit for bit: one
    /// token and 5, rows not a multiple of the 4 per workgroup, 41 blocks of 32 (a partial group of
    /// 4) and 17 blocks of 256 (more than the 16 a pass takes), a token of zeros (amax 0) and one
    /// with a large outlier; then a band of rows at an unaligned offset, accumulated at scale 0.5.
    /// The subgroup tier is measured too, to show the comparison can fail: its float dequantized
    /// products differ from the CPU kernels.
    func testInt8TierProductsEqualTheCPUKernelsBitForBit() throws {
        let device = try requireDevice()
        guard VulkanTests.Tier.available(device).contains(.int8) else {
            if VulkanTests.required && device.integerDotProduct { XCTFail("the int8 tier is missing on a device with integer dot products") }
            throw XCTSkip("the device lacks VK_KHR_shader_integer_dot_product")
        }
        XCTAssertEqual(puna_kernels_activation_levels(), 1, "the int8 tier serves one activation level")
        let vk = try context(Int32(PUNA_VK_TIER_INT8.rawValue)), sub = try context(Int32(PUNA_VK_TIER_SUBGROUP.rawValue))
        defer { puna_vk_destroy(vk); puna_vk_destroy(sub) }
        let fma = puna_vk_int8_fma(vk)
        XCTAssertTrue([PUNA_VK_FMA_FUSED, PUNA_VK_FMA_F64, PUNA_VK_FMA_UNFUSED].map { Int32($0.rawValue) }.contains(fma), "\(fma)")
        XCTAssertEqual(puna_vk_int8_fma(sub), -1)
        // lavapipe runs fma() as a multiply and an add, and has f64: the double variant.
        if device.name.hasPrefix("llvmpipe") { XCTAssertEqual(fma, Int32(PUNA_VK_FMA_F64.rawValue)) }
        let exact = fma != Int32(PUNA_VK_FMA_UNFUSED.rawValue)
        let pool = puna_pool_create(2)!
        defer { puna_pool_destroy(pool) }
        var rng = KernelTests.Rng(state: 0x1D07)
        var report: [String] = []
        let rows = 37
        for (name, type) in Self.types {
            let t = Int32(type.rawValue)
            let cols = typeInfo(type).block_size == 256 ? 17 * 256 : 41 * 32
            let w = weights(type, rows: rows, cols: cols, rng: &rng)
            var buffers: [puna_vk_buffer] = []
            for ctx in [vk, sub] {
                var buffer = puna_vk_buffer()
                var gpuType: Int32 = -1, zeroCopy: Int32 = -1
                let rc = w.withUnsafeBytes { puna_vk_upload_matrix(ctx, t, $0.baseAddress, Int64(rows), Int64(cols), &buffer, &gpuType, &zeroCopy) }
                XCTAssertEqual(rc, 0, error(ctx))
                XCTAssertEqual(gpuType, t, name)
                buffers.append(buffer)
            }
            for tokens in [1, 5] {
                var x = rng.floats(tokens * cols, 3)
                if tokens > 1 {
                    for i in 0..<cols { x[cols + i] = 0 }   // token 1: all zero
                    x[2 * cols + 7] = 900                    // token 2: one outlier
                }
                var cpu = [Float](repeating: .nan, count: rows * tokens)
                let rc = w.withUnsafeBytes { wb in
                    cpu.withUnsafeMutableBufferPointer { puna_matmul(pool, t, wb.baseAddress, Int64(rows), Int64(cols), x, Int64(tokens), $0.baseAddress) }
                }
                XCTAssertEqual(rc, 0)
                var y = puna_vk_buffer(), ySub = puna_vk_buffer()
                XCTAssertEqual(puna_vk_alloc(vk, UInt64(rows * tokens * 4), Int32(PUNA_VK_MEMORY_HOST.rawValue), 0, &y), 0, error(vk))
                XCTAssertEqual(puna_vk_alloc(sub, UInt64(rows * tokens * 4), Int32(PUNA_VK_MEMORY_HOST.rawValue), 0, &ySub), 0, error(sub))
                let gpu = try gpuProduct(vk, t, buffers[0], cols: cols, first: 0, count: rows, x, tokens: tokens, into: y)
                let mismatches = zip(gpu, cpu).filter { $0.0.bitPattern != $0.1.bitPattern }.count
                let first = 5, count = 29
                let bandCPU = (0..<tokens).flatMap { k in cpu[(k * rows + first)..<(k * rows + first + count)] }
                let band = try gpuProduct(vk, t, buffers[0], cols: cols, first: first, count: count, x, tokens: tokens, into: y)
                let accumulated = try gpuProduct(vk, t, buffers[0], cols: cols, first: first, count: count, x, tokens: tokens, into: y,
                                                 alpha: 0.5, accumulate: true)
                let accumulatedCPU = bandCPU.map { $0 + 0.5 * $0 }
                if exact {
                    XCTAssertEqual(mismatches, 0, "\(name) \(tokens) token(s): \(mismatches) of \(cpu.count) differ; max rel \(relative(gpu, cpu, scale: cpu))")
                    XCTAssertEqual(band.map { $0.bitPattern }, bandCPU.map { $0.bitPattern }, "\(name) \(tokens) token(s), band")
                    XCTAssertEqual(accumulated.map { $0.bitPattern }, accumulatedCPU.map { $0.bitPattern }, "\(name) \(tokens) token(s), accumulated")
                } else {
                    // fma() not fused and no f64: each step's rounding may differ from the CPU's.
                    XCTAssertLessThanOrEqual(relative(gpu, cpu, scale: cpu), 1e-5, "\(name) \(tokens) token(s)")
                    XCTAssertLessThanOrEqual(relative(band, bandCPU, scale: bandCPU), 1e-5, "\(name) \(tokens) token(s), band")
                    XCTAssertLessThanOrEqual(relative(accumulated, accumulatedCPU, scale: accumulatedCPU), 1e-5, "\(name) \(tokens) token(s), accumulated")
                }
                let subgroup = try gpuProduct(sub, t, buffers[1], cols: cols, first: 0, count: rows, x, tokens: tokens, into: ySub)
                let subDiff = relative(subgroup, cpu, scale: cpu)
                if tokens == 1 { XCTAssertGreaterThan(subDiff, 0, "\(name): the float shaders were expected to differ from the CPU kernels") }
                report.append("\(name) \(tokens) token(s): int8 tier \(mismatches) of \(cpu.count) values differ, "
                              + "max rel \(relative(gpu, cpu, scale: cpu)); subgroup tier max rel \(subDiff)")
            }
        }
        print("Vulkan int8 tier (fma mode \(fma)) vs the CPU default kernels:\n" + report.joined(separator: "\n"))
    }

    /// The fp16 tier's F16 matrix x vector (weights loaded as halves, f32 arithmetic): the subgroup
    /// tier's bits, so within float rounding of the CPU's F16 kernel, with activations inside and
    /// far outside the f16 range; a band of rows gives the whole product's rows.
    func testFP16TierF16MatrixTimesVector() throws {
        let device = try requireDevice()
        guard VulkanTests.Tier.available(device).contains(.fp16) else {
            if VulkanTests.required && device.storageBuffer16Bit { XCTFail("the fp16 tier is missing") }
            throw XCTSkip("the device lacks 16-bit storage")
        }
        let fp16 = try context(Int32(PUNA_VK_TIER_FP16.rawValue)), sub = try context(Int32(PUNA_VK_TIER_SUBGROUP.rawValue))
        defer { puna_vk_destroy(fp16); puna_vk_destroy(sub) }
        let pool = puna_pool_create(2)!
        defer { puna_pool_destroy(pool) }
        let rows = 45, cols = 1024
        let t = Int32(PUNA_TYPE_F16.rawValue)
        var rng = KernelTests.Rng(state: 0xF16)
        let w = weights(PUNA_TYPE_F16, rows: rows, cols: cols, rng: &rng)
        var report: [String] = []
        for (label, scale) in [("activations within f16", Float(4)), ("activations past f16", Float(4e5))] {
            let x = rng.floats(cols, scale)
            var cpu = [Float](repeating: .nan, count: rows)
            let rc = w.withUnsafeBytes { wb in
                cpu.withUnsafeMutableBufferPointer { puna_matmul(pool, t, wb.baseAddress, Int64(rows), Int64(cols), x, 1, $0.baseAddress) }
            }
            XCTAssertEqual(rc, 0)
            var results: [[Float]] = []
            for ctx in [fp16, sub] {
                var buffer = puna_vk_buffer(), y = puna_vk_buffer()
                var gpuType: Int32 = -1, zeroCopy: Int32 = -1
                XCTAssertEqual(w.withUnsafeBytes { puna_vk_upload_matrix(ctx, t, $0.baseAddress, Int64(rows), Int64(cols), &buffer, &gpuType, &zeroCopy) }, 0, error(ctx))
                XCTAssertEqual(puna_vk_alloc(ctx, UInt64(rows * 4), Int32(PUNA_VK_MEMORY_HOST.rawValue), 0, &y), 0, error(ctx))
                results.append(try gpuProduct(ctx, t, buffer, cols: cols, first: 0, count: rows, x, tokens: 1, into: y))
                if ctx == fp16 {
                    let band = try gpuProduct(ctx, t, buffer, cols: cols, first: 3, count: 37, x, tokens: 1, into: y)
                    XCTAssertEqual(band, Array(results[0][3..<40]), label)
                }
            }
            let d = relative(results[0], cpu, scale: cpu), dSub = relative(results[1], cpu, scale: cpu)
            report.append("\(label): fp16 tier \(d), subgroup tier \(dSub)")
            XCTAssertTrue(results[0].allSatisfy { $0.isFinite }, label)
            XCTAssertLessThanOrEqual(d, 1e-5, label)
            XCTAssertEqual(results[0].map { $0.bitPattern }, results[1].map { $0.bitPattern }, "\(label): fp16 vs subgroup tier")
        }
        print("Vulkan fp16 tier, F16 matrix x vector vs the CPU, max|diff|/max|y|:\n" + report.joined(separator: "\n"))
    }

    /// Tier names, support checks with what is missing, forcing through PUNA_VK_TIER, refusals.
    func testTiersAreChosenForcedAndRefused() throws {
        XCTAssertEqual((0..<Int32(PUNA_VK_TIER_COUNT.rawValue)).map { String(cString: puna_vk_tier_name($0)) }, ["baseline", "subgroup", "fp16", "int8"])
        XCTAssertNil(puna_vk_tier_name(Int32(PUNA_VK_TIER_COUNT.rawValue)))
        XCTAssertEqual(puna_vk_tier_from_name("int8"), Int32(PUNA_VK_TIER_INT8.rawValue))
        XCTAssertEqual(puna_vk_tier_from_name("fast"), -1)
        var info = puna_vk_device_info()
        info.usable = 1
        info.subgroup_arithmetic = 1
        var missing = [CChar](repeating: 0, count: 256)
        XCTAssertEqual(puna_vk_tier_supported(&info, Int32(PUNA_VK_TIER_INT8.rawValue), &missing, 256), 0)
        XCTAssertEqual(String(cString: missing), "storageBuffer16BitAccess, VK_KHR_shader_integer_dot_product")
        XCTAssertEqual(puna_vk_best_tier(&info), Int32(PUNA_VK_TIER_SUBGROUP.rawValue))
        info.storage_buffer_16bit = 1
        XCTAssertEqual(puna_vk_best_tier(&info), Int32(PUNA_VK_TIER_FP16.rawValue))
        info.subgroup_arithmetic = 0
        XCTAssertEqual(puna_vk_tier_supported(&info, Int32(PUNA_VK_TIER_INT8.rawValue), &missing, 256), 0)
        XCTAssertEqual(String(cString: missing), "subgroup arithmetic in compute shaders, VK_KHR_shader_integer_dot_product")
        XCTAssertEqual(puna_vk_best_tier(&info), Int32(PUNA_VK_TIER_BASELINE.rawValue))
        info.integer_dot_product = 1
        info.subgroup_arithmetic = 1
        XCTAssertEqual(puna_vk_tier_supported(&info, Int32(PUNA_VK_TIER_INT8.rawValue), &missing, 256), 1)
        XCTAssertEqual(String(cString: missing), "")
        // Supported but emulated: not picked by default.
        XCTAssertEqual(puna_vk_best_tier(&info), Int32(PUNA_VK_TIER_FP16.rawValue))
        info.integer_dot_product_accelerated = 1
        XCTAssertEqual(puna_vk_best_tier(&info), Int32(PUNA_VK_TIER_INT8.rawValue))

        let device = try requireDevice()
        let best = VulkanTests.Tier.available(device).last { $0 != .int8 || device.integerDotProductAccelerated }
        XCTAssertEqual(device.tier, best?.rawValue)
        // Automatic: the best tier; PUNA_VK_TIER forces one; PUNA_VK_BASELINE=1 still means baseline;
        // the argument wins over both; an unknown name is an error naming the variable.
        func create(_ tier: Int32) -> (OpaquePointer?, String) {
            var message = [CChar](repeating: 0, count: 512)
            let vk = message.withUnsafeMutableBufferPointer { puna_vk_create(-1, tier, $0.baseAddress, 512) }
            return (vk, message.withUnsafeBufferPointer { String(cString: $0.baseAddress!) })
        }
        var (made, _) = create(-1)
        XCTAssertEqual(made.map { puna_vk_tier($0) }, VulkanTests.Tier(rawValue: device.tier)!.index)
        if let made { puna_vk_destroy(made) }
        for tier in VulkanTests.Tier.available(device) {
            setenv("PUNA_VK_TIER", tier.rawValue, 1)
            (made, _) = create(-1)
            XCTAssertEqual(made.map { puna_vk_tier($0) }, tier.index, "PUNA_VK_TIER=\(tier)")
            if let made { puna_vk_destroy(made) }
        }
        setenv("PUNA_VK_TIER", "turbo", 1)
        let (bad, message) = create(-1)
        XCTAssertNil(bad)
        XCTAssertTrue(message.contains("PUNA_VK_TIER=turbo is not a tier"), message)
        puna_vk_destroy(try context(Int32(PUNA_VK_TIER_BASELINE.rawValue)))   // the argument wins
        unsetenv("PUNA_VK_TIER")
        setenv("PUNA_VK_BASELINE", "1", 1)
        (made, _) = create(-1)
        XCTAssertEqual(made.map { puna_vk_tier($0) }, Int32(PUNA_VK_TIER_BASELINE.rawValue))
        if let made { puna_vk_destroy(made) }
        unsetenv("PUNA_VK_BASELINE")
        // A tier the device lacks (none on lavapipe; then a number past the last) names what is missing.
        let lacking = VulkanTests.Tier.allCases.first { !VulkanTests.Tier.available(device).contains($0) }
        let (refused, why) = create(lacking?.index ?? Int32(PUNA_VK_TIER_COUNT.rawValue))
        XCTAssertNil(refused)
        XCTAssertTrue(why.contains("needs") && why.contains("lacks"), why)
        XCTAssertThrowsError(try LanguageModel(path: Fixtures.models.appendingPathComponent("tiny-gqa-q8_0.gguf").path,
                                               options: ModelOptions(threads: 1)).useVulkan(VulkanOptions(tier: "turbo", required: true))) { error in
            XCTAssertTrue("\(error)".contains("no shader tier 'turbo'"), "\(error)")
        }
    }
}
