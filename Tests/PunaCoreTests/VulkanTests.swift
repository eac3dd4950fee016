import CPuna
import CPunaVulkan
import Foundation
import PunaCore
import XCTest

/// The Vulkan backend against the CPU backend and against transformers, on the tiny fixture models,
/// in both shader tiers (baseline: Vulkan 1.1 core only; subgroup: subgroup arithmetic). CI runs
/// these on Mesa's lavapipe (a CPU Vulkan driver) with PUNA_REQUIRE_VULKAN=1, so a missing device
/// fails there instead of skipping.
///
/// "The CPU" here is the CPU backend with its reference kernels (rows decoded to f32, the same
/// arithmetic the shaders do), so the comparison measures the GPU path and not the 8-bit
/// activation rounding the fast CPU kernels use; those are compared too. Tolerances (issue 7):
/// 1e-3 of max|logit| on F32/F16 files, 3e-2 on quantized ones, against the CPU (both kernel
/// sets) and against transformers.
final class VulkanTests: XCTestCase {
    /// The shader tiers (include/puna_vulkan.h), lowest first; tests run every one the device has.
    enum Tier: String, CaseIterable {
        case baseline, subgroup, fp16, int8
        var index: Int32 { Int32(Self.allCases.firstIndex(of: self)!) }
        /// The int8 tier computes quantized matmuls as the CPU's default kernels do (activations
        /// quantized to 8 bits), so the CPU figures it is held to are those kernels'; the others
        /// dequantize to f32 as the reference kernels do.
        var cpuReferenceKernels: Bool { self != .int8 }
        /// The tiers `device` supports (every one on lavapipe, which CI uses).
        static func available(_ device: VulkanDevice) -> [Tier] {
            allCases.filter { t in device.tiers.contains { $0.name == t.rawValue && $0.missing.isEmpty } }
        }
    }

    static func tolerance(_ type: String) -> Float { type == "f32" || type == "f16" ? 1e-3 : 3e-2 }
    /// The int8 tier against the CPU's default kernels on quantized files. Their matmuls agree bit
    /// for bit (VulkanInt8Tests), and most files end within float rounding (~1e-7); where the
    /// other ops' rounding moves one activation across an 8-bit rounding boundary, the logits of
    /// these tiny random models move by up to ~2e-2.
    static let int8Tolerance: Float = 3e-2

    static var required: Bool { ProcessInfo.processInfo.environment["PUNA_REQUIRE_VULKAN"] == "1" }

    func models() throws -> [[String: Any]] { try XCTUnwrap(Fixtures.manifest()["models"] as? [[String: Any]]) }

    func path(_ file: String) -> String { Fixtures.models.appendingPathComponent(file).path }

    /// Logits on the CPU, with the reference kernels unless told otherwise.
    func cpuLogits(_ model: LanguageModel, _ tokens: [Int32], cacheType: GGMLType, context: Int = 64,
                   referenceKernels: Bool = true) throws -> [Float] {
        puna_kernels_set_reference_only(referenceKernels ? 1 : 0)
        defer { puna_kernels_set_reference_only(0) }
        return try model.evaluate(tokens, cache: model.makeCache(contextLength: context, type: cacheType), allLogits: true)
    }

    func useGPU(_ model: LanguageModel, _ tier: Tier, device: VulkanDevice, gpuLayers: Int = -1) throws {
        try model.useVulkan(VulkanOptions(gpuLayers: gpuLayers, tier: tier.rawValue, required: true))
        let note = try XCTUnwrap(model.backendNote)
        XCTAssertTrue(note.contains(", \(tier.rawValue) tier"), note)
    }

    func greedyTokens(_ model: LanguageModel, prompt: [Int32], count: Int) throws -> [Int32] {
        let cache = try model.makeCache(contextLength: 64, type: .f32)
        var logits = try model.evaluate(prompt, cache: cache)
        var produced: [Int32] = []
        for _ in 0..<count {
            var best = 0
            for i in 1..<logits.count where logits[i] > logits[best] { best = i }
            produced.append(Int32(best))
            logits = try model.evaluate([Int32(best)], cache: cache)
        }
        return produced
    }

    // MARK: - SPIR-V

    /// Every embedded module: SPIR-V 1.3 at most (Vulkan 1.1); the baseline tier declares only the
    /// Shader capability and no extension (so no fp16, int8, 16/8-bit storage, int dot, subgroup
    /// ops) and every module keeps its shared memory within 16 KiB.
    func testBaselineShadersDeclareNoOptionalCapability() throws {
        let shaders = VulkanShader.all
        XCTAssertGreaterThanOrEqual(shaders.count, 20)
        let baseline = Set(shaders.filter { $0.tier == 0 }.map(\.name))
        for name in ["matvec_f32", "matvec_f16", "matvec_q4_0", "matvec_q8_0", "matvec_q4_k", "matvec_q6_k", "matmul_q4_0",
                     "matmul_q6_k", "matvec_bnb4", "matmul_bnb4", "matvec_bnb_int8", "matmul_bnb_int8", "rmsnorm", "rope",
                     "kv_store", "attention", "swiglu", "bias"] {
            XCTAssertTrue(baseline.contains(name), "no baseline shader \(name)")
        }
        var subgroupCapabilitySeen = false
        for s in shaders {
            let module = try SPIRVModule(s.words, name: s.name)
            XCTAssertLessThanOrEqual(module.version, 0x0001_0300, "\(s.name): SPIR-V newer than 1.3")
            if s.tier == 0 {
                XCTAssertEqual(module.capabilities, [SPIRVModule.capabilityShader], "\(s.name) (baseline) declares \(module.capabilities)")
                XCTAssertEqual(module.extensions, [], "\(s.name) (baseline)")
            } else if s.tier == 1 {
                XCTAssertTrue(module.capabilities.isSubset(of: [SPIRVModule.capabilityShader, 61, 63]),
                              "\(s.name) (subgroup tier) declares \(module.capabilities)")
                if module.capabilities.contains(63) { subgroupCapabilitySeen = true }
            } else if s.tier == 2 {
                // fp16: 16-bit storage (no Float16 arithmetic), nothing else new.
                XCTAssertTrue(module.capabilities.isSubset(of: [SPIRVModule.capabilityShader, 61, 63, 4433]),
                              "\(s.name) (fp16 tier) declares \(module.capabilities)")
                XCTAssertTrue(module.capabilities.contains(4433), s.name)
                XCTAssertEqual(module.extensions, [], s.name)
            } else {
                // int8: the packed 4x8 dot product (DotProductInput4x8BitPacked, DotProduct) and
                // nothing the tier does not enable (no Int8/Float16 arithmetic, no 8/16-bit storage).
                XCTAssertEqual(s.tier, 3, s.name)
                // The _f64 variants compute fma in double (Float64) where the driver's fma() is not fused.
                let float64: Set<UInt32> = s.name.hasSuffix("_f64") ? [10] : []
                XCTAssertTrue(module.capabilities.isSubset(of: Set([SPIRVModule.capabilityShader, 61, 63, 6018, 6019]).union(float64)),
                              "\(s.name) (int8 tier) declares \(module.capabilities)")
                XCTAssertTrue(Set(module.extensions).isSubset(of: ["SPV_KHR_integer_dot_product"]), "\(s.name): \(module.extensions)")
                if s.name.hasPrefix("matvec_dot_") { XCTAssertTrue(module.capabilities.contains(6019), s.name) }
            }
            XCTAssertLessThanOrEqual(module.sharedMemoryBytes, 16384, "\(s.name) uses \(module.sharedMemoryBytes) bytes of shared memory")
        }
        XCTAssertTrue(subgroupCapabilitySeen, "no subgroup-tier module uses GroupNonUniformArithmetic")
    }

    /// Every shader compiles and the committed header is what the sources give now.
    func testShaderHeaderIsFresh() throws {
        let root = Fixtures.root.deletingLastPathComponent().deletingLastPathComponent()
        let tools = ["glslangValidator", "spirv-opt", "spirv-val"]
        let missing = tools.filter { tool in
            !(ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").contains {
                FileManager.default.isExecutableFile(atPath: "\($0)/\(tool)")
            }
        }
        if !missing.isEmpty {
            if Self.required { XCTFail("PUNA_REQUIRE_VULKAN=1 but \(missing.joined(separator: ", ")) not installed") }
            throw XCTSkip("needs \(missing.joined(separator: ", ")) (glslang-tools, spirv-tools)")
        }
        let p = Process()
        p.executableURL = root.appendingPathComponent("scripts/compile-shaders")
        p.arguments = ["--check"]
        let err = Pipe()
        p.standardError = err
        p.standardOutput = Pipe()
        try p.run()
        let message = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, message)
    }

    // MARK: - numbers

    /// puna_vk_kv_store into a q8_0 cache writes the bytes the CPU cache's encoder writes for the
    /// same keys and values: rows of 3 blocks (so blocks straddle words both ways), several tokens
    /// at once, a ring wrapping, a row of zeros, an outlier, and tiny values (f16 subnormal scales);
    /// rows it was not asked to write keep their bytes.
    func testQ8_0CacheStoresTheCPUsBytes() throws {
        _ = try requireDevice()
        var message = [CChar](repeating: 0, count: 512)
        let vk = try XCTUnwrap(message.withUnsafeMutableBufferPointer { puna_vk_create(-1, -1, $0.baseAddress, 512) },
                               message.withUnsafeBufferPointer { String(cString: $0.baseAddress!) })
        defer { puna_vk_destroy(vk) }
        func err() -> String { String(cString: puna_vk_error(vk)) }
        let kvDim = 96, ring = 5, tokens = 4
        let rowBytes = Int(puna_vk_kv_row_bytes(Int32(PUNA_VK_KV_Q8_0.rawValue), UInt32(kvDim)))
        XCTAssertEqual(rowBytes, 3 * 34)
        XCTAssertEqual(puna_vk_kv_row_bytes(Int32(PUNA_VK_KV_Q8_0.rawValue), 80), 0)
        var caches: [puna_vk_buffer] = []
        for _ in 0..<2 {
            var b = puna_vk_buffer()
            XCTAssertEqual(puna_vk_alloc(vk, UInt64(ring * rowBytes), Int32(PUNA_VK_MEMORY_HOST.rawValue), 0, &b), 0, err())
            memset(puna_vk_host_pointer(vk, b), 0xA5, ring * rowBytes)
            caches.append(b)
        }
        var rng = KernelTests.Rng(state: 0x4B56)
        var expected = [[UInt8]](repeating: [UInt8](repeating: 0xA5, count: ring * rowBytes), count: 2)
        for (step, pos0) in [0, 4].enumerated() {   // positions 0..3, then 4..7 (rows 4, 0, 1, 2)
            var rows: [[Float]] = [rng.floats(tokens * kvDim, 2), rng.floats(tokens * kvDim, 0.5)]
            if step == 0 {
                for i in 0..<kvDim { rows[0][kvDim + i] = 0 }
                rows[1][7] = 3000
                for i in 0..<32 { rows[0][2 * kvDim + 32 + i] = Float(i) * 1e-9 }
            }
            var inputs: [puna_vk_buffer] = []
            for r in rows {
                var b = puna_vk_buffer()
                XCTAssertEqual(puna_vk_alloc(vk, UInt64(r.count * 4), Int32(PUNA_VK_MEMORY_DEVICE.rawValue), 0, &b), 0, err())
                XCTAssertEqual(r.withUnsafeBytes { puna_vk_write(vk, b, 0, $0.baseAddress, UInt64($0.count)) }, 0, err())
                inputs.append(b)
            }
            XCTAssertEqual(puna_vk_begin(vk), 0, err())
            puna_vk_kv_store(vk, inputs[0], inputs[1], 0, caches[0], caches[1], UInt32(tokens), UInt32(kvDim), UInt32(pos0),
                             Int32(PUNA_VK_KV_Q8_0.rawValue), UInt32(ring))
            XCTAssertEqual(puna_vk_submit(vk), 0, err())
            for c in 0..<2 {
                for t in 0..<tokens {
                    let row = (pos0 + t) % ring
                    let bytes = try GGMLType.q8_0.encode(Array(rows[c][(t * kvDim)..<((t + 1) * kvDim)]))
                    expected[c].replaceSubrange((row * rowBytes)..<((row + 1) * rowBytes), with: bytes)
                }
                let got = Array(UnsafeRawBufferPointer(start: puna_vk_host_pointer(vk, caches[c]), count: ring * rowBytes))
                XCTAssertEqual(got, expected[c], "step \(step), \(c == 0 ? "keys" : "values")")
            }
        }
        // A width the format cannot hold is an error, not a partial write.
        XCTAssertEqual(puna_vk_begin(vk), 0, err())
        puna_vk_kv_store(vk, caches[0], caches[1], 0, caches[0], caches[1], 1, 80, 0, Int32(PUNA_VK_KV_Q8_0.rawValue), 0)
        XCTAssertNotEqual(puna_vk_submit(vk), 0)
        XCTAssertTrue(err().contains("cannot hold rows of 80"), err())
    }

    func testLogitsMatchCPUAndTransformersOnEveryFileInBothTiers() throws {
        let device = try requireDevice()
        let manifest = try Fixtures.manifest()
        let tokens = try XCTUnwrap((manifest["reference"] as? [String: Any])?["tokens"] as? [Int]).map { Int32($0) }
        var report: [String] = []
        for entry in try models() {
            let file = entry["file"] as! String, type = entry["type"] as! String
            let tolerance = Self.tolerance(type)
            let expected = try Fixtures.floats(Fixtures.models.appendingPathComponent(entry["logits"] as! String))
            let cpu = try LanguageModel(path: path(file), options: ModelOptions(threads: 2))
            let cpuF32 = try cpuLogits(cpu, tokens, cacheType: .f32)
            let cpuF16 = try cpuLogits(cpu, tokens, cacheType: .f16)
            let cpuFast = try cpuLogits(cpu, tokens, cacheType: .f32, referenceKernels: false)
            let cpuFastF16 = try cpuLogits(cpu, tokens, cacheType: .f16, referenceKernels: false)
            // The CPU's default kernels quantize activations to one 8-bit level: their own figure.
            let fastTolerance = ConformanceTests.tolerance(type, activationLevels: Int(puna_kernels_activation_levels()))
            for tier in Tier.available(device) {
                let gpu = try LanguageModel(path: path(file), options: ModelOptions(threads: 2))
                try useGPU(gpu, tier, device: device)
                let gpuF32 = try gpu.evaluate(tokens, cache: gpu.makeCache(contextLength: 64, type: .f32), allLogits: true)
                let gpuF16 = try gpu.evaluate(tokens, cache: gpu.makeCache(contextLength: 64, type: .f16), allLogits: true)
                let (refF32, refF16) = tier.cpuReferenceKernels ? (cpuF32, cpuF16) : (cpuFast, cpuFastF16)
                let vsCPU = relative(gpuF32, refF32, scale: refF32)
                let vsCPUf16 = relative(gpuF16, refF16, scale: refF16)
                let vsFast = relative(gpuF32, cpuFast, scale: cpuFast)
                let vsTransformers = relative(gpuF32, expected, scale: expected)
                report.append("\(file) \(tier.rawValue): vs CPU \(tier.cpuReferenceKernels ? "reference" : "default") kernels \(vsCPU) "
                              + "(f16 cache \(vsCPUf16)), vs CPU default kernels \(vsFast), vs transformers \(vsTransformers)")
                // int8: the matmuls are the CPU kernels' bits, the rest rounds as the other tiers do.
                let limit = tier.cpuReferenceKernels || type == "f32" || type == "f16" ? tolerance : Self.int8Tolerance
                XCTAssertLessThanOrEqual(vsCPU, limit, "\(file) \(tier)")
                XCTAssertLessThanOrEqual(vsCPUf16, limit, "\(file) \(tier) f16 cache")
                XCTAssertLessThanOrEqual(vsFast, fastTolerance, "\(file) \(tier) vs the CPU's default kernels")
                XCTAssertLessThanOrEqual(vsTransformers, tier.cpuReferenceKernels ? tolerance : fastTolerance, "\(file) \(tier) vs transformers")
                if tier == .fp16 && type == "f16" {
                    // Token by token: the matrix x vector shader, where the fp16 tier loads halves.
                    let cache = try gpu.makeCache(contextLength: 64, type: .f32)
                    var stepped: [Float] = []
                    for t in tokens { stepped += try gpu.evaluate([t], cache: cache) }
                    let d = relative(stepped, cpuF32, scale: cpuF32)
                    report.append("\(file) fp16 token by token: vs CPU \(d)")
                    XCTAssertLessThanOrEqual(d, tolerance, "\(file) fp16 token by token")
                }
            }
        }
        print("Vulkan logits, max|diff|/max|logit|:\n" + report.joined(separator: "\n"))
    }

    /// 32 greedy tokens (one submission per token: the matrix × vector shaders) equal the CPU's
    /// and transformers', on one file of every type, in both tiers.
    func testGreedyGenerationMatchesCPUInBothTiers() throws {
        let device = try requireDevice()
        let manifest = try Fixtures.manifest()
        let greedy = try XCTUnwrap(manifest["greedy"] as? [String: Any])
        let prompt = try XCTUnwrap(greedy["prompt_tokens"] as? [Int]).map { Int32($0) }
        var seenTypes = Set<String>()
        for entry in try models() {
            let file = entry["file"] as! String, type = entry["type"] as! String
            guard seenTypes.insert(type).inserted else { continue }
            let expected = try XCTUnwrap((entry["greedy"] as? [String: Any])?["tokens"] as? [Int]).map { Int32($0) }
            let cpu = try LanguageModel(path: path(file), options: ModelOptions(threads: 2))
            puna_kernels_set_reference_only(1)
            let cpuTokens = try greedyTokens(cpu, prompt: prompt, count: 32)
            puna_kernels_set_reference_only(0)
            XCTAssertEqual(cpuTokens, expected, "\(file): CPU reference kernels vs transformers")
            let cpuFastTokens = try greedyTokens(cpu, prompt: prompt, count: 32)
            for tier in Tier.available(device) {
                let gpu = try LanguageModel(path: path(file), options: ModelOptions(threads: 2))
                try useGPU(gpu, tier, device: device)
                XCTAssertEqual(try greedyTokens(gpu, prompt: prompt, count: 32), tier.cpuReferenceKernels ? cpuTokens : cpuFastTokens,
                               "\(file) \(tier)")
            }
        }
        XCTAssertGreaterThanOrEqual(seenTypes.count, 8, "types covered: \(seenTypes)")
    }

    /// A long sequence in small batches: attention over more positions than one workgroup's
    /// chunk (64), the tiled shader at positions > 0, an f16 cache; then partial offload (one
    /// layer on the GPU, the other on the CPU), the copy path without host-memory import and the
    /// discrete-GPU path (staging uploads into unmapped device memory).
    func testLongContextSmallBatchesPartialOffloadAndCopyPath() throws {
        let device = try requireDevice()
        let file = "tiny-gqa-q4_k_m.gguf"
        var seed: UInt32 = 12345
        let tokens: [Int32] = (0..<150).map { _ in
            seed = seed &* 1_103_515_245 &+ 12345
            return Int32(3 + (seed >> 16) % 509)
        }
        let cpu = try LanguageModel(path: path(file), options: ModelOptions(threads: 2))
        let cpuF16 = try cpuLogits(cpu, tokens, cacheType: .f16, context: 160)
        let cpuFastF16 = try cpuLogits(cpu, tokens, cacheType: .f16, context: 160, referenceKernels: false)
        let cpuQ8 = try cpuLogits(cpu, tokens, cacheType: .q8_0, context: 160)
        let cpuFastQ8 = try cpuLogits(cpu, tokens, cacheType: .q8_0, context: 160, referenceKernels: false)
        for tier in Tier.available(device) {
            let gpu = try LanguageModel(path: path(file), options: ModelOptions(threads: 2, batchSize: 7))
            try useGPU(gpu, tier, device: device)
            let logits = try gpu.evaluate(tokens, cache: gpu.makeCache(contextLength: 160, type: .f16), allLogits: true)
            let reference = tier.cpuReferenceKernels ? cpuF16 : cpuFastF16
            let d = relative(logits, reference, scale: reference)
            print("\(file) 150 tokens in batches of 7, f16 cache, \(tier.rawValue): \(d)")
            XCTAssertLessThanOrEqual(d, tier.cpuReferenceKernels ? 1e-3 : Self.int8Tolerance, "\(tier)")
            // A q8_0 cache is q8_0 on the GPU too: the CPU's q8_0-cache logits, not the f16 ones.
            let q8 = try gpu.evaluate(tokens, cache: gpu.makeCache(contextLength: 160, type: .q8_0), allLogits: true)
            let referenceQ8 = tier.cpuReferenceKernels ? cpuQ8 : cpuFastQ8
            let dQ8 = relative(q8, referenceQ8, scale: referenceQ8)
            print("\(file) 150 tokens in batches of 7, q8_0 cache, \(tier.rawValue): \(dQ8) (f16 vs q8_0 cache on the CPU: "
                  + "\(relative(reference, referenceQ8, scale: referenceQ8)))")
            // Keys a float rounding apart can land in different 8-bit steps: a wider bound than
            // f16's, still well under the f16-vs-q8_0 cache difference printed above.
            XCTAssertLessThanOrEqual(dQ8, tier.cpuReferenceKernels ? 3e-3 : Self.int8Tolerance, "\(tier): q8_0 cache on the GPU")
            XCTAssertGreaterThan(relative(q8, logits, scale: logits), 0, "\(tier): the q8_0 cache gave the f16 cache's logits")
        }

        let partial = try LanguageModel(path: path(file), options: ModelOptions(threads: 2))
        try useGPU(partial, .baseline, device: device, gpuLayers: 1)
        XCTAssertTrue(partial.backendNote!.contains("1/2 layers on the GPU"), partial.backendNote!)
        puna_kernels_set_reference_only(1)
        let mixed = try partial.evaluate(tokens, cache: partial.makeCache(contextLength: 160, type: .f16), allLogits: true)
        puna_kernels_set_reference_only(0)
        let d = relative(mixed, cpuF16, scale: cpuF16)
        print("\(file) --gpu-layers 1: \(d)")
        XCTAssertLessThanOrEqual(d, 1e-3)

        let imported = try LanguageModel(path: path(file), options: ModelOptions(threads: 2))
        try useGPU(imported, .baseline, device: device)
        setenv("PUNA_VK_NO_IMPORT", "1", 1)
        let copied = try LanguageModel(path: path(file), options: ModelOptions(threads: 2))
        defer { unsetenv("PUNA_VK_NO_IMPORT") }
        try useGPU(copied, .baseline, device: device)
        XCTAssertTrue(copied.backendNote!.contains("weights 0 B zero-copy"), copied.backendNote!)
        // The discrete-GPU path: device memory never mapped, weights through the staging buffer.
        setenv("PUNA_VK_STAGING", "1", 1)
        let staged = try LanguageModel(path: path(file), options: ModelOptions(threads: 2))
        defer { unsetenv("PUNA_VK_STAGING") }
        try useGPU(staged, .baseline, device: device)
        XCTAssertTrue(staged.backendNote!.contains("weights 0 B zero-copy"), staged.backendNote!)
        let short = Array(tokens.prefix(20))
        let a = try imported.evaluate(short, cache: imported.makeCache(contextLength: 32, type: .f32), allLogits: true)
        let b = try copied.evaluate(short, cache: copied.makeCache(contextLength: 32, type: .f32), allLogits: true)
        let c = try staged.evaluate(short, cache: staged.makeCache(contextLength: 32, type: .f32), allLogits: true)
        XCTAssertEqual(a, b, "imported and copied weights give different logits")
        XCTAssertEqual(a, c, "imported and staged weights give different logits")
    }

    // MARK: - LoRA

    /// Unmerged adapters on the GPU (PEFT folders and GGUF LoRAs; rank 4 to 16; f32, bf16 and f16
    /// factors; rsLoRA; one on the output head and the embeddings; two at once; on quantized bases)
    /// equal the CPU with the same adapters and PEFT's reference; switching adapters off and
    /// re-scaling them needs no new upload.
    func testUnmergedAdaptersMatchCPUAndPEFTInBothTiers() throws {
        let device = try requireDevice()
        let dir = Fixtures.root.appendingPathComponent("lora")
        let manifest = try Fixtures.json(dir.appendingPathComponent("manifest.json"))
        let tokens = try XCTUnwrap(manifest["tokens"] as? [Int]).map { Int32($0) }
        func p(_ relative: String) -> String { dir.appendingPathComponent(relative).standardized.path }
        struct Case { let name: String; let base: String; let adapters: [(String, Float)]; let reference: String; let tolerance: Float }
        var cases: [Case] = []
        for a in try XCTUnwrap(manifest["adapters"] as? [[String: Any]]) {
            let name = a["name"] as! String, base = a["base"] as! String, reference = a["peft_logits"] as! String
            cases.append(Case(name: name + " (PEFT)", base: base, adapters: [(a["peft_folder"] as! String, 1)], reference: reference, tolerance: 1e-3))
            if let gguf = a["gguf"] as? String {
                cases.append(Case(name: name + " (GGUF)", base: base, adapters: [(gguf, 1)], reference: reference, tolerance: 1e-3))
            }
        }
        for pair in (manifest["pairs"] as? [[String: Any]]) ?? [] {
            let list = (pair["adapters"] as! [[String: Any]]).map { ($0["adapter"] as! String, Float($0["scale"] as! Double)) }
            cases.append(Case(name: pair["name"] as! String, base: pair["base"] as! String, adapters: list,
                              reference: pair["peft_logits"] as! String, tolerance: 1e-3))
        }
        for q in (manifest["quantized"] as? [[String: Any]]) ?? [] {
            cases.append(Case(name: "\(q["adapter"]!) on \(q["type"]!)", base: q["base"] as! String, adapters: [(q["adapter"] as! String, 1)],
                              reference: q["peft_logits"] as! String, tolerance: 3e-2))
        }
        XCTAssertGreaterThanOrEqual(cases.count, 10)
        var report: [String] = []
        for c in cases {
            func load(_ model: LanguageModel) throws {
                var set = AdapterSet()
                for (source, scale) in c.adapters { set.entries.append((try LoRAAdapter.load(path: p(source), for: model), scale)) }
                model.activeAdapters = set
            }
            let expected = try Fixtures.floats(dir.appendingPathComponent(c.reference))
            let cpu = try LanguageModel(path: p(c.base), options: ModelOptions(threads: 2))
            let cpuBase = try cpuLogits(cpu, tokens, cacheType: .f32)
            try load(cpu)
            let cpuAdapted = try cpuLogits(cpu, tokens, cacheType: .f32)
            let quantized = c.tolerance > 1e-3
            let cpuFastAdapted = quantized ? try cpuLogits(cpu, tokens, cacheType: .f32, referenceKernels: false) : cpuAdapted
            for tier in Tier.available(device) {
                let gpu = try LanguageModel(path: p(c.base), options: ModelOptions(threads: 2))
                try load(gpu)
                try useGPU(gpu, tier, device: device)
                let logits = try gpu.evaluate(tokens, cache: gpu.makeCache(contextLength: 64, type: .f32), allLogits: true)
                let reference = tier.cpuReferenceKernels ? cpuAdapted : cpuFastAdapted
                let vsCPU = relative(logits, reference, scale: reference)
                let vsPEFT = relative(logits, expected, scale: expected)
                report.append("\(c.name) \(tier.rawValue): vs CPU \(vsCPU), vs PEFT \(vsPEFT)")
                // int8 on a quantized base: the CPU default kernels' figures (ConformanceTests).
                let int8 = !tier.cpuReferenceKernels && quantized
                XCTAssertLessThanOrEqual(vsCPU, int8 ? Self.int8Tolerance : c.tolerance, "\(c.name) \(tier)")
                XCTAssertLessThanOrEqual(vsPEFT, int8 ? ConformanceTests.tolerance("q4_k", activationLevels: 1) : c.tolerance, "\(c.name) \(tier)")
                if tier == .baseline {
                    let active = gpu.activeAdapters
                    gpu.activeAdapters = .none
                    let off = try gpu.evaluate(tokens, cache: gpu.makeCache(contextLength: 64, type: .f32), allLogits: true)
                    XCTAssertLessThanOrEqual(relative(off, cpuBase, scale: cpuBase), c.tolerance, "\(c.name) switched off")
                    gpu.activeAdapters = active
                    let again = try gpu.evaluate(tokens, cache: gpu.makeCache(contextLength: 64, type: .f32), allLogits: true)
                    XCTAssertEqual(again, logits, "\(c.name) switched back on")
                }
            }
        }
        print("Vulkan with unmerged LoRA, max|diff|/max|logit|:\n" + report.joined(separator: "\n"))
    }

    func testGreedyGenerationWithAdapterMatchesCPU() throws {
        let device = try requireDevice()
        let dir = Fixtures.root.appendingPathComponent("lora")
        let manifest = try Fixtures.json(dir.appendingPathComponent("manifest.json"))
        let entry = try XCTUnwrap((manifest["adapters"] as? [[String: Any]])?.first { $0["name"] as? String == "mha-all" })
        let expected = try XCTUnwrap((entry["greedy"] as? [String: Any])?["tokens"] as? [Int]).map { Int32($0) }
        let prompt = try XCTUnwrap((Fixtures.manifest()["greedy"] as? [String: Any])?["prompt_tokens"] as? [Int]).map { Int32($0) }
        let base = dir.appendingPathComponent(entry["base"] as! String).standardized.path
        let folder = dir.appendingPathComponent(entry["peft_folder"] as! String).path
        let cpu = try LanguageModel(path: base, options: ModelOptions(threads: 2))
        cpu.activeAdapters = AdapterSet([(try LoRAAdapter.load(path: folder, for: cpu), 1)])
        puna_kernels_set_reference_only(1)
        let cpuTokens = try greedyTokens(cpu, prompt: prompt, count: 32)
        puna_kernels_set_reference_only(0)
        for tier in Tier.available(device) {
            let gpu = try LanguageModel(path: base, options: ModelOptions(threads: 2))
            gpu.activeAdapters = AdapterSet([(try LoRAAdapter.load(path: folder, for: gpu), 1)])
            try useGPU(gpu, tier, device: device)
            let tokens = try greedyTokens(gpu, prompt: prompt, count: 32)
            XCTAssertEqual(tokens, cpuTokens, "\(tier)")
            XCTAssertEqual(tokens, expected, "\(tier) vs PEFT's greedy tokens")
        }
    }

    // MARK: - CLI

    func testCLIBackendFlagsDevicesAndFallback() throws {
        _ = try requireDevice()
        let (status, stdout, stderr) = try Fixtures.runPuna(["devices", "--json"])
        XCTAssertEqual(status, 0, stderr)
        let devices = try XCTUnwrap((JSONSerialization.jsonObject(with: Data(stdout.utf8)) as? [String: Any])?["devices"] as? [[String: Any]])
        XCTAssertTrue(devices.contains { $0["usable"] as? Bool == true }, stdout)
        for key in ["name", "type", "api_version", "heaps", "subgroup_size", "shader_float16", "shader_int8",
                    "integer_dot_product", "storage_buffer_16bit", "shared_memory_bytes"] {
            XCTAssertNotNil(devices.first?[key], "puna devices --json lacks \(key)")
        }

        let model = path("tiny-tied-f32.gguf")
        func logits(_ extra: [String]) throws -> ([[Double]], String) {
            let (status, out, err) = try Fixtures.runPuna(["logits", "-m", model, "--tokens", "1,339,440,432,310", "--json"] + extra)
            XCTAssertEqual(status, 0, err)
            let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
            return (try XCTUnwrap(json["logits"] as? [[Double]]), err)
        }
        let (cpu, cpuErr) = try logits([])
        XCTAssertFalse(cpuErr.contains("vulkan"), cpuErr)
        let (gpu, gpuErr) = try logits(["--backend", "vulkan", "--device", "0"])
        XCTAssertTrue(gpuErr.contains("vulkan: device 0"), gpuErr)
        let scale = cpu.joined().reduce(0) { max($0, abs($1)) }
        XCTAssertLessThanOrEqual(zip(cpu.joined(), gpu.joined()).reduce(0) { max($0, abs($1.0 - $1.1)) } / scale, 1e-3)

        let runArgs = ["run", "-m", model, "-p", "You may convey", "-n", "32", "--temp", "0", "--ignore-eos"]
        let (s1, cpuText, _) = try Fixtures.runPuna(runArgs)
        let (s2, gpuText, gpuRunErr) = try Fixtures.runPuna(runArgs + ["--backend", "vulkan"])
        XCTAssertEqual(s1, 0)
        XCTAssertEqual(s2, 0, gpuRunErr)
        XCTAssertEqual(gpuText, cpuText)

        let (benchStatus, benchOut, benchErr) = try Fixtures.runPuna(["bench", "-m", model, "-p", "16", "-n", "4", "-r", "1",
                                                                      "--backend", "vulkan", "--json"])
        XCTAssertEqual(benchStatus, 0, benchErr)
        XCTAssertTrue(benchErr.contains("vulkan: device"), benchErr)
        let bench = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(benchOut.utf8)) as? [String: Any])
        XCTAssertEqual(bench["backend"] as? String, "vulkan")

        for (args, message) in [(["--backend", "metal"], "unknown backend 'metal'"),
                                (["--gpu-layers", "1"], "need --backend vulkan"),
                                (["--backend", "vulkan", "--gpu-layers", "x"], "flag --gpu-layers")] {
            let (status, _, err) = try Fixtures.runPuna(["logits", "-m", model, "--tokens", "1,2"] + args)
            XCTAssertEqual(status, 1, err)
            XCTAssertTrue(err.contains(message), "\(args): \(err)")
        }

        // A submission that outlives PUNA_VK_TIMEOUT_S is an error naming the variable, not a hang
        // and not a crash while the device may still be reading the weights.
        setenv("PUNA_VK_TIMEOUT_S", "0.000001", 1)
        let (timeoutStatus, _, timeoutErr) = try Fixtures.runPuna(["logits", "-m", path("tiny-gqa-q8_0.gguf"), "--tokens",
                                                                   "1,2,3,4,5,6,7,8", "--backend", "vulkan"])
        unsetenv("PUNA_VK_TIMEOUT_S")
        XCTAssertEqual(timeoutStatus, 1, timeoutErr)
        XCTAssertTrue(timeoutErr.contains("PUNA_VK_TIMEOUT_S"), timeoutErr)

        // No driver to be found: the CPU runs it, and says why.
        setenv("VK_ICD_FILENAMES", "/nonexistent/puna-no-driver.json", 1)
        setenv("VK_DRIVER_FILES", "/nonexistent/puna-no-driver.json", 1)
        defer { unsetenv("VK_ICD_FILENAMES"); unsetenv("VK_DRIVER_FILES") }
        let (fallback, fallbackErr) = try logits(["--backend", "vulkan"])
        XCTAssertTrue(fallbackErr.contains("running on the CPU"), fallbackErr)
        XCTAssertEqual(fallback, cpu)
        let (status2, _, devicesErr) = try Fixtures.runPuna(["devices"])
        XCTAssertEqual(status2, 1)
        XCTAssertTrue(devicesErr.contains("Vulkan"), devicesErr)
    }
}

/// Just enough of a SPIR-V parser for the checks above: capabilities, extensions and the bytes
/// of Workgroup-storage (shared) variables, with arrays sized by constants or by the defaults of
/// specialization constants.
struct SPIRVModule {
    static let capabilityShader: UInt32 = 1
    let version: UInt32
    var capabilities: Set<UInt32> = []
    var extensions: [String] = []
    var sharedMemoryBytes = 0

    init(_ words: [UInt32], name: String) throws {
        guard words.count > 5, words[0] == 0x0723_0203 else { throw PunaError("\(name): not SPIR-V") }
        version = words[1]
        var typeBytes: [UInt32: Int] = [:]        // type id -> size in bytes
        var constants: [UInt32: UInt32] = [:]     // integer constant id -> value
        var pointee: [UInt32: (storage: UInt32, type: UInt32)] = [:]
        var i = 5
        while i < words.count {
            let count = Int(words[i] >> 16), op = words[i] & 0xffff
            guard count > 0, i + count <= words.count else { throw PunaError("\(name): bad instruction at word \(i)") }
            let w = Array(words[i..<(i + count)])
            switch op {
            case 17: capabilities.insert(w[1])                                  // OpCapability
            case 10:                                                            // OpExtension
                let bytes = w.dropFirst().flatMap { v in (0..<4).map { UInt8((v >> (8 * $0)) & 0xff) } }
                extensions.append(String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self))
            case 21, 22: typeBytes[w[1]] = Int(w[2]) / 8                        // OpTypeInt, OpTypeFloat
            case 20: typeBytes[w[1]] = 4                                        // OpTypeBool
            case 23: typeBytes[w[1]] = (typeBytes[w[2]] ?? 0) * Int(w[3])       // OpTypeVector
            case 24: typeBytes[w[1]] = (typeBytes[w[2]] ?? 0) * Int(w[3])       // OpTypeMatrix
            case 28: typeBytes[w[1]] = (typeBytes[w[2]] ?? 0) * Int(constants[w[3]] ?? 0)   // OpTypeArray
            case 30: typeBytes[w[1]] = w.dropFirst(2).reduce(0) { $0 + (typeBytes[$1] ?? 0) } // OpTypeStruct
            case 43, 50: constants[w[2]] = w[3]                                 // OpConstant, OpSpecConstant
            case 32: pointee[w[1]] = (w[2], w[3])                               // OpTypePointer
            case 59:                                                            // OpVariable
                if w[3] == 4, let p = pointee[w[1]] { sharedMemoryBytes += typeBytes[p.type] ?? 0 }   // Workgroup
            default: break
            }
            i += count
        }
    }
}

extension XCTestCase {
    /// Skips (or fails, with PUNA_REQUIRE_VULKAN=1) when no usable Vulkan device is present.
    func requireDevice() throws -> VulkanDevice {
        var reason = "no Vulkan device supports Vulkan 1.1 compute"
        do {
            if let d = try VulkanDevice.all().first(where: { $0.usable }) { return d }
        } catch {
            reason = error.message
        }
        if VulkanTests.required { XCTFail("PUNA_REQUIRE_VULKAN=1 but \(reason)") }
        throw XCTSkip("Vulkan tests skipped: \(reason) (CI installs mesa-vulkan-drivers and sets PUNA_REQUIRE_VULKAN=1)")
    }

    /// Largest |a - b| relative to the largest |reference|; infinity when the lengths differ or a
    /// difference is NaN.
    func relative(_ a: [Float], _ b: [Float], scale reference: [Float]) -> Float {
        XCTAssertEqual(a.count, b.count)
        let scale = reference.reduce(0) { max($0, abs($1)) }
        var worst: Float = 0
        for i in 0..<min(a.count, b.count) { worst = max(worst, abs(a[i] - b[i])) }
        return a.count == b.count && !worst.isNaN ? worst / scale : .infinity
    }
}
