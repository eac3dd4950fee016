import CPuna
import Foundation
import PunaCore
import XCTest

/// The Vulkan backend on every architecture family of Tests/Fixtures/arch (Llama 3 with rope_freqs,
/// Mistral's sliding window, Qwen2's Q/K/V biases and NEOX RoPE, Qwen3's per-head Q/K norms and
/// wide heads, Phi-3's fused QKV and gate/up with partial LongRoPE, SmolLM2), in both shader tiers:
/// against the CPU (reference kernels: the arithmetic the shaders do) and transformers, with f32
/// and f16 KV caches; greedy generation; unmerged PEFT LoRA on the new targets (fused ones
/// included); sliding-window rings; partial offload; and what the shaders still do not compute.
/// (Named so that `swift test --filter VulkanTests` runs it with the other Vulkan suites.)
final class ArchitectureVulkanTests: XCTestCase {
    typealias Tier = VulkanTests.Tier
    static let root = Fixtures.root.appendingPathComponent("arch")

    /// max|diff| / max|logit|: 1e-3 for F32 files, 2e-3 for F16, 6e-2 for q8_0, 8e-2 for 4/5-bit.
    static func tolerance(_ type: String) -> Float {
        switch type {
        case "f32": return 1e-3
        case "f16": return 2e-3
        case "q8_0": return 6e-2
        default: return 8e-2
        }
    }

    /// The arch manifest, or a skip when the fixtures are absent (scripts/fixtures/make_arch_models.py).
    func manifest() throws -> [String: Any] {
        let url = Self.root.appendingPathComponent("manifest.json")
        guard FileManager.default.fileExists(atPath: url.path) else {
            throw XCTSkip("no architecture fixtures (Tests/Fixtures/arch/manifest.json; scripts/fixtures/make_arch_models.py makes them)")
        }
        return try Fixtures.json(url)
    }

    /// Architectures the shaders do not compute yet: they run on the CPU (README, "Vulkan").
    static let cpuOnlyArchitectures: Set<String> = ["gemma2", "gemma3", "bloom"]

    func families() throws -> [[String: Any]] { try XCTUnwrap(manifest()["families"] as? [[String: Any]]) }

    /// The families whose architecture runs on the GPU.
    func gpuFamilies() throws -> [[String: Any]] {
        try families().filter { !Self.cpuOnlyArchitectures.contains($0["architecture"] as! String) }
    }

    func path(_ name: String) -> String { Self.root.appendingPathComponent(name).path }

    func referenceTokens() throws -> [Int32] {
        try XCTUnwrap((manifest()["reference"] as? [String: Any])?["tokens"] as? [Int]).map { Int32($0) }
    }

    /// CPU logits with the reference kernels (rows decoded to f32, as the shaders compute).
    func cpuLogits(_ model: LanguageModel, _ tokens: [Int32], cache: KVCache, referenceKernels: Bool = true) throws -> [Float] {
        puna_kernels_set_reference_only(referenceKernels ? 1 : 0)
        defer { puna_kernels_set_reference_only(0) }
        return try model.evaluate(tokens, cache: cache, allLogits: true)
    }

    func gpuModel(_ file: String, _ tier: Tier, device: VulkanDevice, gpuLayers: Int = -1, batchSize: Int = 256,
                  adapters: [String] = []) throws -> LanguageModel {
        let model = try LanguageModel(path: path(file), options: ModelOptions(threads: 2, batchSize: batchSize))
        if !adapters.isEmpty {
            model.activeAdapters = AdapterSet(try adapters.map { (try LoRAAdapter.load(path: $0, for: model), Float(1)) })
        }
        try model.useVulkan(VulkanOptions(gpuLayers: gpuLayers, tier: tier.rawValue, required: true))
        XCTAssertTrue(model.usesVulkan, file)
        let note = try XCTUnwrap(model.backendNote)
        XCTAssertTrue(note.contains(", \(tier.rawValue) tier"), note)
        return model
    }

    func greedy(_ model: LanguageModel, _ prompt: [Int32], count: Int, reference: Bool = false) throws -> [Int32] {
        if reference { puna_kernels_set_reference_only(1) }
        defer { puna_kernels_set_reference_only(0) }
        return try Fixtures.greedy(model, prompt, count: count)
    }

    // MARK: - logits

    /// Every file of every family, both tiers, f32 and f16 caches, against the CPU with the same
    /// cache type and against transformers.
    func testLogitsOnEveryArchitectureFileInBothTiers() throws {
        let device = try requireDevice()
        let tokens = try referenceTokens()
        var report: [String] = []
        var checked = Set<String>()
        for family in try gpuFamilies() {
            let name = family["family"] as! String
            for entry in family["files"] as! [[String: Any]] {
                let file = entry["file"] as! String, type = entry["type"] as! String
                let limit = Self.tolerance(type)
                let expected = try Fixtures.floats(Self.root.appendingPathComponent(entry["logits"] as! String))
                let cpu = try LanguageModel(path: path(file), options: ModelOptions(threads: 2))
                let quantized = type != "f32" && type != "f16"
                // Per cache type: the reference kernels' logits, and the default kernels' (int8 tier).
                var cpuLogits: [GGMLType: [Float]] = [:], cpuFast: [GGMLType: [Float]] = [:]
                for cacheType in [GGMLType.f32, .f16] {
                    cpuLogits[cacheType] = try self.cpuLogits(cpu, tokens, cache: cpu.makeCache(contextLength: 64, type: cacheType))
                    if quantized {
                        cpuFast[cacheType] = try self.cpuLogits(cpu, tokens, cache: cpu.makeCache(contextLength: 64, type: cacheType),
                                                                referenceKernels: false)
                    }
                }
                for tier in Tier.available(device) {
                    let gpu = try gpuModel(file, tier, device: device)
                    let int8 = quantized && !tier.cpuReferenceKernels
                    for cacheType in [GGMLType.f32, .f16] {
                        let logits = try gpu.evaluate(tokens, cache: gpu.makeCache(contextLength: 64, type: cacheType), allLogits: true)
                        let reference = (int8 ? cpuFast : cpuLogits)[cacheType]!
                        let vsCPU = relative(logits, reference, scale: reference)
                        let vsTransformers = relative(logits, expected, scale: expected)
                        report.append("\(name) \(file) \(tier.rawValue) \(cacheType.name) cache: vs CPU \(int8 ? "default" : "reference") kernels "
                                      + "\(vsCPU), vs transformers \(vsTransformers)")
                        XCTAssertLessThanOrEqual(vsCPU, int8 ? VulkanTests.int8Tolerance : limit, "\(file) \(tier) \(cacheType.name) cache vs CPU")
                        XCTAssertLessThanOrEqual(vsTransformers, limit, "\(file) \(tier) \(cacheType.name) cache vs transformers")
                    }
                }
                checked.insert(name)
            }
        }
        print("Vulkan on the architecture fixtures, max|diff|/max|logit|:\n" + report.joined(separator: "\n"))
        for family in ["llama3", "mistral", "qwen2", "qwen3", "phi3"] { XCTAssertTrue(checked.contains(family), "no \(family) fixture checked") }
    }

    /// Phi-3's long factors: a cache longer than the original context rotates with them, on the
    /// GPU as on the CPU.
    func testLongRoPEFactorsBeyondTheOriginalContext() throws {
        let device = try requireDevice()
        guard let phi = try families().first(where: { $0["family"] as? String == "phi3" }),
              let entry = (phi["files"] as! [[String: Any]]).first(where: { $0["type"] as? String == "f32" }),
              let long = entry["long_factors"] as? [String: Any], let reference = long["logits"] as? String,
              let context = long["llama_cpp_context"] as? Int else {
            throw XCTSkip("no phi3 long-factor reference in the manifest")
        }
        let file = entry["file"] as! String
        let tokens = try referenceTokens()
        let expected = try Fixtures.floats(Self.root.appendingPathComponent(reference))
        let short = try Fixtures.floats(Self.root.appendingPathComponent(entry["logits"] as! String))
        let cpu = try LanguageModel(path: path(file), options: ModelOptions(threads: 2))
        let cpuLong = try cpuLogits(cpu, tokens, cache: cpu.makeCache(contextLength: context, type: .f32))
        for tier in Tier.available(device) {
            let gpu = try gpuModel(file, tier, device: device)
            let logits = try gpu.evaluate(tokens, cache: gpu.makeCache(contextLength: context, type: .f32), allLogits: true)
            let vsCPU = relative(logits, cpuLong, scale: cpuLong), vsTransformers = relative(logits, expected, scale: expected)
            print("phi3 long factors (cache \(context)) \(tier.rawValue): vs CPU \(vsCPU), vs transformers \(vsTransformers)")
            XCTAssertLessThanOrEqual(vsCPU, 1e-3, "\(tier)")
            XCTAssertLessThanOrEqual(vsTransformers, 1e-3, "\(tier)")
            // The long factors really changed the numbers.
            XCTAssertGreaterThan(relative(logits, short, scale: short), 1e-2, "\(tier)")
        }
    }

    /// 32 greedy tokens on every F32 file equal the CPU's (and transformers'), in both tiers.
    func testGreedyGenerationOnF32FilesMatchesCPUInBothTiers() throws {
        let device = try requireDevice()
        let prompt = try XCTUnwrap((manifest()["greedy"] as? [String: Any])?["prompt_tokens"] as? [Int]).map { Int32($0) }
        var checked = 0
        for family in try gpuFamilies() {
            for entry in family["files"] as! [[String: Any]] where entry["type"] as? String == "f32" {
                let file = entry["file"] as! String
                let expected = try XCTUnwrap((entry["greedy"] as? [String: Any])?["tokens"] as? [Int]).map { Int32($0) }
                let cpu = try LanguageModel(path: path(file), options: ModelOptions(threads: 2))
                let cpuTokens = try greedy(cpu, prompt, count: 32, reference: true)
                XCTAssertEqual(cpuTokens, expected, "\(file): CPU vs transformers")
                for tier in Tier.available(device) {
                    let gpu = try gpuModel(file, tier, device: device)
                    XCTAssertEqual(try greedy(gpu, prompt, count: 32), cpuTokens, "\(file) \(tier)")
                }
                checked += 1
            }
        }
        XCTAssertGreaterThanOrEqual(checked, 5)
    }

    // MARK: - LoRA

    /// Each family's PEFT adapter (and its GGUF conversion when there is one) unmerged on the GPU:
    /// Q/K/V or fused QKV, O, gate/up or fused gate/up, down; against the CPU with the same adapter
    /// and PEFT's logits.
    func testUnmergedLoRAOnEveryFamilyInBothTiers() throws {
        let device = try requireDevice()
        let tokens = try referenceTokens()
        var report: [String] = []
        var checked = Set<String>()
        for family in try gpuFamilies() {
            guard let lora = family["lora"] as? [String: Any] else { continue }
            let name = family["family"] as! String
            let base = lora["base"] as! String
            let peft = try Fixtures.floats(Self.root.appendingPathComponent(lora["peft_logits"] as! String))
            var adapters = [path(lora["peft_dir"] as! String)]
            if let gguf = lora["gguf"] as? String { adapters.append(path(gguf)) }
            let limit = Self.tolerance(((family["files"] as! [[String: Any]]).first { $0["file"] as? String == base }?["type"] as? String) ?? "f32")
            for adapter in adapters {
                let cpu = try LanguageModel(path: path(base), options: ModelOptions(threads: 2))
                cpu.activeAdapters = AdapterSet([(try LoRAAdapter.load(path: adapter, for: cpu), 1)])
                let cpuAdapted = try cpuLogits(cpu, tokens, cache: cpu.makeCache(contextLength: 64, type: .f32))
                for tier in Tier.available(device) {
                    let gpu = try gpuModel(base, tier, device: device, adapters: [adapter])
                    let logits = try gpu.evaluate(tokens, cache: gpu.makeCache(contextLength: 64, type: .f32), allLogits: true)
                    let vsCPU = relative(logits, cpuAdapted, scale: cpuAdapted), vsPEFT = relative(logits, peft, scale: peft)
                    report.append("\(name) \(URL(fileURLWithPath: adapter).lastPathComponent) \(tier.rawValue): vs CPU \(vsCPU), vs PEFT \(vsPEFT)")
                    XCTAssertLessThanOrEqual(vsCPU, limit, "\(name) \(adapter) \(tier)")
                    XCTAssertLessThanOrEqual(vsPEFT, limit, "\(name) \(adapter) \(tier) vs PEFT")
                    // One token at a time too (the matrix x vector shaders, LoRA bands included).
                    if tier == .subgroup {
                        let cache = try gpu.makeCache(contextLength: 64, type: .f32)
                        var stepped: [Float] = []
                        for t in tokens { stepped += try gpu.evaluate([t], cache: cache) }
                        XCTAssertLessThanOrEqual(relative(stepped, cpuAdapted, scale: cpuAdapted), limit, "\(name) \(adapter) token by token")
                    }
                }
                checked.insert(name)
            }
        }
        print("Vulkan with unmerged LoRA on the architecture fixtures, max|diff|/max|logit|:\n" + report.joined(separator: "\n"))
        for family in ["llama3", "mistral", "qwen2", "qwen3", "phi3"] { XCTAssertTrue(checked.contains(family), "no \(family) adapter checked") }
    }

    // MARK: - sliding window, partial offload

    /// Mistral's window (6) over rings of 8 rows, in steps of 3 and token by token: the same
    /// logits as the CPU over the same ring and over a full cache; a rewind past the ring is refused.
    func testSlidingWindowRingsOnTheGPU() throws {
        let device = try requireDevice()
        guard let mistral = try families().first(where: { $0["family"] as? String == "mistral" }),
              let entry = (mistral["files"] as! [[String: Any]]).first(where: { $0["type"] as? String == "f32" }) else {
            throw XCTSkip("no mistral fixture")
        }
        let file = entry["file"] as! String
        let expected = try Fixtures.floats(Self.root.appendingPathComponent(entry["logits"] as! String))
        let tokens = try referenceTokens()
        let cpu = try LanguageModel(path: path(file), options: ModelOptions(threads: 2, batchSize: 3))
        let c = cpu.config
        XCTAssertEqual(c.slidingWindow, 6)
        func ring(_ rows: Int = 8, _ type: GGMLType = .f32) throws -> KVCache {
            try KVCache(layers: c.blockCount, capacity: 128, kvDimension: c.kvDimension, type: type,
                        ringRows: [Int](repeating: rows, count: c.blockCount))
        }
        let full = try cpuLogits(cpu, tokens, cache: cpu.makeCache(contextLength: 64, type: .f32))
        // 120 tokens: the rings wrap many times.
        var seed: UInt32 = 777
        let long: [Int32] = tokens + (0..<104).map { _ in
            seed = seed &* 1_103_515_245 &+ 12345
            return Int32(3 + (seed >> 16) % 509)
        }
        let cpuLong = try cpuLogits(cpu, long, cache: ring())
        XCTAssertLessThanOrEqual(relative(Array(cpuLong.prefix(full.count)), full, scale: full), 1e-5)
        for tier in Tier.available(device) {
            let gpu = try gpuModel(file, tier, device: device, batchSize: 3)
            let stepped = try gpu.evaluate(long, cache: ring(), allLogits: true)
            let d = relative(stepped, cpuLong, scale: cpuLong)
            let vsTransformers = relative(Array(stepped.prefix(expected.count)), expected, scale: expected)
            print("mistral window 6, rings of 8 rows, 120 tokens in steps of 3, \(tier.rawValue): vs CPU \(d), first 16 vs transformers \(vsTransformers)")
            XCTAssertLessThanOrEqual(d, 1e-3, "\(tier)")
            XCTAssertLessThanOrEqual(vsTransformers, 1e-3, "\(tier)")
            let f16 = try gpu.evaluate(long, cache: ring(8, .f16), allLogits: true)
            XCTAssertLessThanOrEqual(relative(f16, cpuLong, scale: cpuLong), 2e-3, "\(tier) f16 ring")
            let cache = try ring()
            var oneByOne: [Float] = []
            for t in long.prefix(40) { oneByOne += try gpu.evaluate([t], cache: cache) }
            XCTAssertLessThanOrEqual(relative(oneByOne, Array(cpuLong.prefix(oneByOne.count)), scale: cpuLong), 1e-3, "\(tier) token by token")
            // A rewind past what the rings keep is refused, on the GPU as on the CPU.
            cache.truncate(to: 4)
            XCTAssertThrowsError(try gpu.evaluate([long[4]], cache: cache)) { e in
                XCTAssertTrue((e as! PunaError).message.contains("rewound past"), "\(e)")
            }
            // The cache the model makes for a long context keeps rings on the GPU too.
            let made = try gpu.makeCache(contextLength: 4096, type: .f16)
            XCTAssertGreaterThan(made.ringRows.first ?? 0, 0)
            let madeLogits = try gpu.evaluate(Array(long.prefix(30)), cache: made, allLogits: true)
            XCTAssertLessThanOrEqual(relative(madeLogits, Array(cpuLong.prefix(madeLogits.count)), scale: cpuLong), 2e-3, "\(tier) model-made ring")
        }
    }

    /// A window wider than the attention shader's chunk of 64 positions over a ring that wraps
    /// inside a chunk: the Mistral file rewritten with a window of 70, 200 tokens in steps of 16.
    func testWideSlidingWindowOverAWrappingRing() throws {
        let device = try requireDevice()
        guard let mistral = try families().first(where: { $0["family"] as? String == "mistral" }),
              let entry = (mistral["files"] as! [[String: Any]]).first(where: { $0["type"] as? String == "q8_0" }) else {
            throw XCTSkip("no mistral fixture")
        }
        let source = try GGUFFile(path: path(entry["file"] as! String))
        var w = GGUFWriter()
        for key in source.keys { w.set(key, source[key]!) }
        w.set("llama.attention.sliding_window", .uint32(70))
        for t in source.tensors { w.addTensor(name: t.name, shape: t.shape, type: t.type, bytes: Array(source.data(of: t))) }
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("puna-vk-window-\(UUID().uuidString).gguf").path
        try w.write(to: file)
        defer { try? FileManager.default.removeItem(atPath: file) }
        var seed: UInt32 = 4242
        let tokens: [Int32] = (0..<200).map { _ in
            seed = seed &* 1_103_515_245 &+ 12345
            return Int32(3 + (seed >> 16) % 509)
        }
        let cpu = try LanguageModel(path: file, options: ModelOptions(threads: 2, batchSize: 16))
        XCTAssertEqual(cpu.config.slidingWindow, 70)
        let c = cpu.config
        func ring() throws -> KVCache {
            try KVCache(layers: c.blockCount, capacity: 256, kvDimension: c.kvDimension, type: .f16, ringRows: [Int](repeating: 90, count: c.blockCount))
        }
        let cpuRing = try cpuLogits(cpu, tokens, cache: ring())
        let cpuFull = try cpuLogits(cpu, tokens, cache: cpu.makeCache(contextLength: 256, type: .f16))
        XCTAssertLessThanOrEqual(relative(cpuRing, cpuFull, scale: cpuFull), 1e-6)
        let cpuFastRing = try cpuLogits(cpu, tokens, cache: ring(), referenceKernels: false)
        let cpuFastFull = try cpuLogits(cpu, tokens, cache: cpu.makeCache(contextLength: 256, type: .f16), referenceKernels: false)
        for tier in Tier.available(device) {
            let gpu = try LanguageModel(path: file, options: ModelOptions(threads: 2, batchSize: 16))
            try gpu.useVulkan(VulkanOptions(tier: tier.rawValue, required: true))
            let ringed = try gpu.evaluate(tokens, cache: ring(), allLogits: true)
            let whole = try gpu.evaluate(tokens, cache: gpu.makeCache(contextLength: 256, type: .f16), allLogits: true)
            let (refRing, refFull) = tier.cpuReferenceKernels ? (cpuRing, cpuFull) : (cpuFastRing, cpuFastFull)
            let d = relative(ringed, refRing, scale: refRing), dFull = relative(whole, refFull, scale: refFull)
            print("window 70 over a ring of 90 rows, 200 tokens in steps of 16, \(tier.rawValue): vs CPU \(d) (full cache \(dFull))")
            let limit: Float = tier.cpuReferenceKernels ? 2e-3 : VulkanTests.int8Tolerance
            XCTAssertLessThanOrEqual(d, limit, "\(tier)")
            XCTAssertLessThanOrEqual(dFull, limit, "\(tier) full cache")
        }
    }

    /// --gpu-layers 1 on the fused (phi3), per-head-norm (qwen3), biased (qwen2) and windowed
    /// (mistral) files: the first layer on the GPU, the second through the CPU's layer loop.
    func testPartialOffloadOnEveryFamily() throws {
        let device = try requireDevice()
        let tokens = try referenceTokens()
        var checked = 0
        for family in try gpuFamilies() {
            guard let entry = (family["files"] as! [[String: Any]]).first(where: { $0["type"] as? String == "f32" }) else { continue }
            let file = entry["file"] as! String
            let cpu = try LanguageModel(path: path(file), options: ModelOptions(threads: 2))
            let reference = try cpuLogits(cpu, tokens, cache: cpu.makeCache(contextLength: 64, type: .f16))
            let gpu = try gpuModel(file, .baseline, device: device, gpuLayers: 1)
            XCTAssertTrue(gpu.backendNote!.contains("1/\(gpu.config.blockCount) layers on the GPU"), gpu.backendNote!)
            puna_kernels_set_reference_only(1)
            let mixed = try gpu.evaluate(tokens, cache: gpu.makeCache(contextLength: 64, type: .f16), allLogits: true)
            puna_kernels_set_reference_only(0)
            let d = relative(mixed, reference, scale: reference)
            print("\(file) --gpu-layers 1: vs CPU \(d)")
            XCTAssertLessThanOrEqual(d, 2e-3, file)
            checked += 1
        }
        XCTAssertGreaterThanOrEqual(checked, 5)
    }

    // MARK: - what stays on the CPU

    /// The Gemma/BLOOM parts the shaders do not compute are named: without `required` the model
    /// runs on the CPU (the CPU's logits exactly) and says why; with it, useVulkan throws the same
    /// message. Exactly the `cpuOnlyArchitectures` fall back; every other family runs on the GPU.
    func testUncomputedFeaturesAreNamedAndRunOnTheCPU() throws {
        _ = try requireDevice()
        let parts = ["gemma2": ["post-norms", "GeGLU", "soft-capping", "embedding scale/norm", "local/global layer patterns"],
                     "gemma3": ["post-norms", "GeGLU", "embedding scale/norm", "local/global layer patterns"],
                     "bloom": ["LayerNorm", "GELU feed-forward", "output/feed-forward biases", "ALiBi", "embedding scale/norm"]]
        let tokens: [Int32] = [1, 339, 440, 432, 310]
        var fellBack: Set<String> = []
        for family in try families() {
            let arch = family["architecture"] as! String
            guard let entry = (family["files"] as! [[String: Any]]).first else { continue }
            let file = path(entry["file"] as! String)
            let m = try LanguageModel(path: file, options: ModelOptions(threads: 2))
            try m.useVulkan(VulkanOptions())
            guard !m.usesVulkan else { continue }
            fellBack.insert(arch)
            let note = try XCTUnwrap(m.backendNote)
            for part in ["the shaders do not compute", "\(arch) model", "running on the CPU"] + (parts[arch] ?? []) {
                XCTAssertTrue(note.contains(part), "'\(part)' not in: \(note)")
            }
            let cpu = try LanguageModel(path: file, options: ModelOptions(threads: 2))
            XCTAssertEqual(try m.evaluate(tokens, cache: m.makeCache(contextLength: 16), allLogits: true),
                           try cpu.evaluate(tokens, cache: cpu.makeCache(contextLength: 16), allLogits: true), file)
            XCTAssertThrowsError(try m.useVulkan(VulkanOptions(required: true))) { error in
                XCTAssertTrue((error as! PunaError).message.contains("the shaders do not compute"), "\(error)")
            }
        }
        XCTAssertEqual(fellBack, Self.cpuOnlyArchitectures)
    }
}
