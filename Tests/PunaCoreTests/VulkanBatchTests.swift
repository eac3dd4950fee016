import CPuna
import Foundation
import PunaCore
import XCTest

/// Batched steps on the Vulkan backend (`evaluateBatch`, and so `puna batch` and `puna serve`): the
/// weight matrices once over every sequence's rows, RoPE / KV store / attention per sequence over
/// its own GPU cache, logits only for the rows that want them. Checked on lavapipe in every tier:
/// each sequence of a batch against the same sequence evaluated alone on the GPU (`aloneBound`)
/// and on the CPU (VulkanTests' tolerances), greedy tokens equal; a sequence's logits do not depend
/// on what shares its steps or how its prompt is chunked (bit for bit); a step is GPU submissions
/// (`vulkanSubmissions`: one per up-to-batch rows, none when the model fell back to the CPU); mixed
/// adapter sets, mixed cache types, partial offload; `puna batch` and `puna serve` with
/// `--backend vulkan`.
final class VulkanBatchTests: XCTestCase {
    typealias Tier = VulkanTests.Tier

    /// Batched vs the same sequence alone, both on the GPU: the same ops on the same rows, except
    /// that `evaluate`'s one-token steps take the matrix × vector shaders (sums in another order)
    /// where batched steps take the tiled ones. max|diff|/max|logit|; measured up to 2.0e-5 on
    /// lavapipe (tiny-gqa-f32), 0 in the int8 tier on quantized files (the same shaders).
    static let aloneBound: Float = 1e-4

    var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("puna-vkbatch-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: dir)
    }

    static func path(_ file: String) -> String {
        file.contains("/") ? Fixtures.root.appendingPathComponent(file).path : Fixtures.models.appendingPathComponent(file).path
    }

    /// The weight type in a fixture's name ("tiny-gqa-q4_k_m.gguf" → "q4_k_m").
    static func weightType(_ file: String) -> String {
        String(file.split(separator: "/").last!.dropLast(5).split(separator: "-").last!)
    }

    /// VulkanTests' CPU-vs-GPU tolerance for a file and cache type.
    static func cpuTolerance(_ file: String, _ tier: Tier, cacheTypes: [GGMLType]) -> Float {
        let type = weightType(file)
        var t = VulkanTests.tolerance(type)
        if !tier.cpuReferenceKernels && type != "f32" && type != "f16" { t = VulkanTests.int8Tolerance }
        if cacheTypes.contains(.q8_0) { t = max(t, 3e-3) }   // VulkanTests' q8_0-cache figure
        return t
    }

    static func argmax(_ v: ArraySlice<Float>) -> Int32 {
        var best = v.startIndex
        for i in v.indices where v[i] > v[best] { best = i }
        return Int32(best - v.startIndex)
    }

    /// Prompts of different lengths (7, 12, 2, 5 tokens), ids inside any fixture's vocabulary.
    static func prompts(vocab: Int) -> [[Int32]] {
        [[1, 450, 496, 173, 170, 432, 172], [1, 90, 250, 263, 31, 298, 27, 471, 263, 217, 299, 13], [1, 150],
         [1, 306, 432, 407, 366]].map { $0.map { Int32(Int($0) % vocab) } }
    }

    /// What a batched run gave: per sequence, the logits of each step ([n_vocab] each) and the
    /// greedy token taken from them.
    struct BatchedRun {
        var logits: [[[Float]]]
        var tokens: [[Int32]]
    }

    /// All prompts in one batched step, then `decode` steps of one greedy token per sequence.
    /// Checks the submissions: ceil(rows / batch) per step on the GPU, none on the CPU.
    func runBatched(_ m: LanguageModel, _ prompts: [[Int32]], cacheTypes: [GGMLType], adapters: [AdapterSet?],
                    decode: Int, batch: Int, file: StaticString = #filePath, line: UInt = #line) throws -> BatchedRun {
        let vocab = m.config.vocabSize
        let caches = try prompts.indices.map { try m.makeCache(contextLength: 64, type: cacheTypes[$0]) }
        var run = BatchedRun(logits: prompts.map { _ in [] }, tokens: prompts.map { _ in [] })
        var pending = prompts
        for _ in 0...decode {
            let slices = prompts.indices.map { BatchSlice(cache: caches[$0], tokens: pending[$0], wantsLogits: true, adapters: adapters[$0]) }
            let rows = pending.reduce(0) { $0 + $1.count }
            let before = m.vulkanSubmissions
            let out = try m.evaluateBatch(slices)
            XCTAssertEqual(m.vulkanSubmissions - before, m.usesVulkan ? (rows + batch - 1) / batch : 0,
                           "GPU submissions of a step of \(rows) rows", file: file, line: line)
            XCTAssertEqual(out.count, prompts.count * vocab, file: file, line: line)
            for i in prompts.indices {
                let row = out[(i * vocab)..<((i + 1) * vocab)]
                run.logits[i].append(Array(row))
                run.tokens[i].append(Self.argmax(row))
                pending[i] = [run.tokens[i].last!]
            }
        }
        for (i, c) in caches.enumerated() { XCTAssertEqual(c.count, prompts[i].count + decode, file: file, line: line) }
        return run
    }

    /// The same sequence alone through `evaluate`, fed the batched run's tokens: its logits per step.
    func runAlone(_ m: LanguageModel, _ prompt: [Int32], fed tokens: [Int32], cacheType: GGMLType,
                  adapters: AdapterSet?) throws -> [[Float]] {
        let saved = m.activeAdapters
        defer { m.activeAdapters = saved }
        if let adapters { m.activeAdapters = adapters }
        let cache = try m.makeCache(contextLength: 64, type: cacheType)
        var logits = [try m.evaluate(prompt, cache: cache)]
        for t in tokens.dropLast() { logits.append(try m.evaluate([t], cache: cache)) }
        return logits
    }

    /// The batched run against each sequence alone on the GPU and on the CPU; returns the worst
    /// differences (alone on the GPU, CPU).
    /// `referenceKernels`: the CPU layers of a partial offload run on the reference kernels too.
    func compare(_ run: BatchedRun, gpu: LanguageModel, cpu: LanguageModel, prompts: [[Int32]], cacheTypes: [GGMLType],
                 adapters: [AdapterSet?], tier: Tier, label: String, referenceKernels: Bool = false) throws -> (Float, Float) {
        var worstAlone: Float = 0, worstCPU: Float = 0
        let tolerance = Self.cpuTolerance(label, tier, cacheTypes: cacheTypes)
        for i in prompts.indices {
            let alone = try runAlone(gpu, prompts[i], fed: run.tokens[i], cacheType: cacheTypes[i], adapters: adapters[i])
            puna_kernels_set_reference_only(tier.cpuReferenceKernels ? 1 : 0)
            let onCPU = try runAlone(cpu, prompts[i], fed: run.tokens[i], cacheType: cacheTypes[i], adapters: adapters[i])
            puna_kernels_set_reference_only(referenceKernels ? 1 : 0)
            for step in run.logits[i].indices {
                let got = run.logits[i][step]
                let dAlone = relative(got, alone[step], scale: alone[step])
                let dCPU = relative(got, onCPU[step], scale: onCPU[step])
                worstAlone = max(worstAlone, dAlone)
                worstCPU = max(worstCPU, dCPU)
                XCTAssertLessThanOrEqual(dAlone, Self.aloneBound, "\(label) \(tier): sequence \(i) step \(step), batched vs alone on the GPU")
                XCTAssertLessThanOrEqual(dCPU, tolerance, "\(label) \(tier): sequence \(i) step \(step), batched GPU vs CPU")
                // Greedy: alone (GPU) picks the token the batch picked at every step.
                XCTAssertEqual(Self.argmax(alone[step][...]), run.tokens[i][step], "\(label) \(tier): sequence \(i) step \(step), greedy token")
                if tier.cpuReferenceKernels {
                    XCTAssertEqual(Self.argmax(onCPU[step][...]), run.tokens[i][step], "\(label) \(tier): sequence \(i) step \(step), CPU greedy token")
                }
            }
        }
        return (worstAlone, worstCPU)
    }

    func gpuModel(_ file: String, _ tier: Tier, batch: Int, gpuLayers: Int = -1) throws -> LanguageModel {
        let m = try LanguageModel(path: Self.path(file), options: ModelOptions(threads: 2, batchSize: batch))
        try m.useVulkan(VulkanOptions(gpuLayers: gpuLayers, tier: tier.rawValue, required: true))
        let note = try XCTUnwrap(m.backendNote)
        XCTAssertTrue(note.contains(", \(tier.rawValue) tier"), note)
        return m
    }

    // MARK: - batched steps

    /// Four sequences (7, 12, 2 and 5 prompt tokens) prefilled in one batched step, split into
    /// GPU submissions of at most 8 rows (so slices continue across submissions), then 6 decode
    /// steps: every sequence's logits against it alone on the GPU and on the CPU, in every tier,
    /// on tiny files of several types (with f32, f16 and q8_0 caches side by side in one step) and
    /// on the architecture fixtures (biases, NEOX, per-head norms, fused bands, LongRoPE).
    func testBatchedStepsMatchEachSequenceAloneAndTheCPU() throws {
        let device = try requireDevice()
        let batch = 8, decode = 6
        var files = ["tiny-gqa-f32.gguf", "tiny-mha-f16.gguf", "tiny-gqa-q4_k_m.gguf", "tiny-tied-q8_0.gguf"]
        let arch = Fixtures.root.appendingPathComponent("arch/manifest.json")
        if FileManager.default.fileExists(atPath: arch.path) {
            files += ["arch/qwen2-f32.gguf", "arch/qwen3-f32.gguf", "arch/phi3-f32.gguf", "arch/llama3-q8_0.gguf"]
        } else if VulkanTests.required {
            XCTFail("no architecture fixtures (Tests/Fixtures/arch)")
        }
        var report: [String] = []
        let available = Tier.available(device)
        for (k, file) in files.enumerated() {
            // Batching is the same code in every tier (each tier's ops per weight type and architecture
            // are VulkanTests' and VulkanArchitectureTests'): two tiers per tiny file, rotating so each
            // tier meets two weight types, and the baseline or int8 tier per architecture.
            let tiers = file.hasPrefix("arch/")
                ? [k % 2 == 0 ? Tier.baseline : Tier.int8].filter(available.contains)
                : available.enumerated().filter { [k % available.count, (k + 2) % available.count].contains($0.offset) }.map(\.element)
            let cpu = try LanguageModel(path: Self.path(file), options: ModelOptions(threads: 2))
            let prompts = Self.prompts(vocab: cpu.config.vocabSize)
            // Mixed cache types where the KV rows are whole q8_0 blocks.
            let mixed = cpu.config.kvDimension % 32 == 0 && file.hasPrefix("tiny")
            let cacheTypes: [GGMLType] = mixed ? [.f32, .f16, .q8_0, .f16] : [.f32, .f32, .f32, .f32]
            let adapters = [AdapterSet?](repeating: nil, count: prompts.count)
            for tier in tiers {
                let gpu = try gpuModel(file, tier, batch: batch)
                let run = try runBatched(gpu, prompts, cacheTypes: cacheTypes, adapters: adapters, decode: decode, batch: batch)
                let (alone, onCPU) = try compare(run, gpu: gpu, cpu: cpu, prompts: prompts, cacheTypes: cacheTypes, adapters: adapters,
                                                 tier: tier, label: file)
                report.append("\(file) \(tier.rawValue): vs alone on the GPU \(alone), vs CPU \(onCPU)")

                // Row independence: sequence 1 alone in its steps, its prompt in chunks of 5, gives
                // the batched run's logits bit for bit.
                let cache = try gpu.makeCache(contextLength: 64, type: cacheTypes[1])
                var own: [[Float]] = []
                var fed = 0
                let vocab = gpu.config.vocabSize
                while fed < prompts[1].count {
                    let n = min(5, prompts[1].count - fed)
                    let last = fed + n == prompts[1].count
                    let out = try gpu.evaluateBatch([BatchSlice(cache: cache, tokens: Array(prompts[1][fed..<fed + n]), wantsLogits: last)])
                    XCTAssertEqual(out.count, last ? vocab : 0)
                    if last { own.append(out) }
                    fed += n
                }
                for t in run.tokens[1].dropLast() {
                    own.append(try gpu.evaluateBatch([BatchSlice(cache: cache, tokens: [t], wantsLogits: true)]))
                }
                XCTAssertTrue(own == run.logits[1], "\(file) \(tier): a sequence's logits depend on what shares its steps")
            }
        }
        print("Vulkan batched steps, max|diff|/max|logit| (bound alone \(Self.aloneBound)):\n" + report.joined(separator: "\n"))
    }

    /// Sequences with different adapter sets in one step (none, the same adapter on two neighbours,
    /// another adapter, the first at half scale; one slice taking the model's active set): each
    /// gets the logits of running alone with its set active, on the GPU and on the CPU.
    func testMixedAdapterSetsInOneStep() throws {
        let device = try requireDevice()
        let lora = Fixtures.root.appendingPathComponent("lora")
        var report: [String] = []
        for file in ["tiny-gqa-f32.gguf", "tiny-gqa-q4_0.gguf"] {
            let cpu = try LanguageModel(path: Self.path(file), options: ModelOptions(threads: 2))
            func sets(_ m: LanguageModel) throws -> [AdapterSet?] {
                let all = try LoRAAdapter.load(path: lora.appendingPathComponent("gqa-all").path, for: m)
                let alpaca = try LoRAAdapter.load(path: lora.appendingPathComponent("gqa-alpaca.gguf").path, for: m)
                return [nil, AdapterSet([(all, 1)]), AdapterSet([(all, 1)]), AdapterSet([(alpaca, 1)]), AdapterSet([(all, 0.5)])]
            }
            let prompts = Self.prompts(vocab: cpu.config.vocabSize) + [[1, 341, 416]]
            let cacheTypes = [GGMLType](repeating: .f32, count: prompts.count)
            let cpuSets = try sets(cpu)
            for tier in [Tier.baseline] + Tier.available(device).filter({ $0 == .int8 }) {
                let gpu = try gpuModel(file, tier, batch: 256)
                let gpuSets = try sets(gpu)
                let run = try runBatched(gpu, prompts, cacheTypes: cacheTypes, adapters: gpuSets, decode: 4, batch: 256)
                // The alone runs of sequence 0 use the model's active set (none) as its slice does.
                var worstAlone: Float = 0, worstCPU: Float = 0
                for i in prompts.indices {
                    let alone = try runAlone(gpu, prompts[i], fed: run.tokens[i], cacheType: .f32, adapters: gpuSets[i])
                    puna_kernels_set_reference_only(tier.cpuReferenceKernels ? 1 : 0)
                    let onCPU = try runAlone(cpu, prompts[i], fed: run.tokens[i], cacheType: .f32, adapters: cpuSets[i])
                    puna_kernels_set_reference_only(0)
                    for step in alone.indices {
                        let dAlone = relative(run.logits[i][step], alone[step], scale: alone[step])
                        let dCPU = relative(run.logits[i][step], onCPU[step], scale: onCPU[step])
                        worstAlone = max(worstAlone, dAlone)
                        worstCPU = max(worstCPU, dCPU)
                        XCTAssertLessThanOrEqual(dAlone, Self.aloneBound, "\(file) \(tier): sequence \(i) step \(step)")
                        XCTAssertLessThanOrEqual(dCPU, Self.cpuTolerance(file, tier, cacheTypes: cacheTypes), "\(file) \(tier): sequence \(i) step \(step) vs CPU")
                        XCTAssertEqual(Self.argmax(alone[step][...]), run.tokens[i][step], "\(file) \(tier): sequence \(i) step \(step)")
                    }
                }
                // The adapters change the logits (or the comparison above would prove nothing).
                let plain = try runAlone(gpu, prompts[1], fed: run.tokens[1], cacheType: .f32, adapters: .none)
                XCTAssertGreaterThan(relative(run.logits[1][0], plain[0], scale: plain[0]), 100 * Self.aloneBound, "\(file) \(tier)")
                report.append("\(file) \(tier.rawValue) with 4 adapter sets: vs alone on the GPU \(worstAlone), vs CPU \(worstCPU)")
            }
        }
        print(report.joined(separator: "\n"))
    }

    /// --gpu-layers 1: the first layer of every sequence on the GPU, the rest and the output on
    /// the CPU over the same stacked rows, as `evaluate` splits a single sequence.
    func testPartialOffloadBatches() throws {
        _ = try requireDevice()
        let file = "tiny-gqa-q4_k_m.gguf"
        let cpu = try LanguageModel(path: Self.path(file), options: ModelOptions(threads: 2))
        let gpu = try gpuModel(file, .baseline, batch: 8, gpuLayers: 1)
        XCTAssertTrue(gpu.backendNote!.contains("1/2 layers on the GPU"), gpu.backendNote!)
        let prompts = Self.prompts(vocab: cpu.config.vocabSize)
        let cacheTypes: [GGMLType] = [.f16, .f16, .f32, .q8_0]
        let adapters = [AdapterSet?](repeating: nil, count: prompts.count)
        puna_kernels_set_reference_only(1)
        defer { puna_kernels_set_reference_only(0) }
        let run = try runBatched(gpu, prompts, cacheTypes: cacheTypes, adapters: adapters, decode: 4, batch: 8)
        let (alone, onCPU) = try compare(run, gpu: gpu, cpu: cpu, prompts: prompts, cacheTypes: cacheTypes, adapters: adapters,
                                         tier: .baseline, label: file, referenceKernels: true)
        print("\(file) --gpu-layers 1, batched: vs alone \(alone), vs CPU \(onCPU)")
    }

    /// A model whose architecture the shaders do not compute falls back to the CPU (useVulkan's
    /// note), and so do its batched steps: the CPU's bits, no GPU submission.
    func testUnsupportedArchitectureBatchesOnTheCPU() throws {
        _ = try requireDevice()
        let file = "arch/gemma2-f32.gguf"
        guard FileManager.default.fileExists(atPath: Self.path(file)) else { throw XCTSkip("no architecture fixtures") }
        let cpu = try LanguageModel(path: Self.path(file), options: ModelOptions(threads: 2))
        let gpu = try LanguageModel(path: Self.path(file), options: ModelOptions(threads: 2))
        try gpu.useVulkan(VulkanOptions())
        XCTAssertFalse(gpu.usesVulkan)
        XCTAssertTrue(gpu.backendNote?.contains("running on the CPU") == true, gpu.backendNote ?? "no note")
        let prompts = Self.prompts(vocab: cpu.config.vocabSize)
        let types = [GGMLType](repeating: .f32, count: prompts.count), none = [AdapterSet?](repeating: nil, count: prompts.count)
        let a = try runBatched(gpu, prompts, cacheTypes: types, adapters: none, decode: 3, batch: 256)
        let b = try runBatched(cpu, prompts, cacheTypes: types, adapters: none, decode: 3, batch: 256)
        XCTAssertTrue(a.logits == b.logits)
        XCTAssertEqual(gpu.vulkanSubmissions, 0)
    }

    /// A step of one row (a sequence decoding alone in a batched step) takes the tiled shader's
    /// one-token variant (matmul1: the tiled sums without the 31 idle token columns of a 32 × 32
    /// tile), never the tiled shader itself; the same sequence's row in a two-row step (the tiled
    /// shader) gets the same logits bit for bit, with and without an adapter (LoRA's B pass has
    /// rank columns, not a whole 32-column tile), in every tier. `evaluate`'s one-token steps keep
    /// the matrix × vector shader.
    func testSingleRowStepsTakeTheOneTokenTiledShader() throws {
        let device = try requireDevice()
        let lora = Fixtures.root.appendingPathComponent("lora")
        for file in ["tiny-gqa-f32.gguf", "tiny-mha-f16.gguf", "tiny-gqa-q4_0.gguf"] {
            for tier in Tier.available(device) {
                let gpu = try gpuModel(file, tier, batch: 8)
                var sets: [AdapterSet?] = [nil]
                if file.hasPrefix("tiny-gqa") {
                    sets.append(AdapterSet([(try LoRAAdapter.load(path: lora.appendingPathComponent("gqa-all").path, for: gpu), 1)]))
                }
                // The float matrix × vector shaders (matvec_dot_* are the int8 tier's, for any row count).
                func matvec() -> Int { gpu.vulkanDispatches("matvec_") - gpu.vulkanDispatches("matvec_dot_") }
                for set in sets {
                    let label = "\(file) \(tier)\(set == nil ? "" : " with an adapter")"
                    let a = try gpu.makeCache(contextLength: 64, type: .f32), b = try gpu.makeCache(contextLength: 64, type: .f32)
                    let other = try gpu.makeCache(contextLength: 64, type: .f32)
                    let prompt: [Int32] = [1, 450, 496, 173]
                    for c in [a, b, other] { _ = try gpu.evaluateBatch([BatchSlice(cache: c, tokens: prompt, wantsLogits: false, adapters: set)]) }
                    // Sequence a alone: one row.
                    let (one, tiled, vector) = (gpu.vulkanDispatches("matmul1_"), gpu.vulkanDispatches("matmul_"), matvec())
                    let alone = try gpu.evaluateBatch([BatchSlice(cache: a, tokens: [306], wantsLogits: true, adapters: set)])
                    // Quantized weights in the int8 tier take the integer dot products for any row count.
                    let floatMatmuls = tier != .int8 || Self.weightType(file).hasPrefix("f")
                    if floatMatmuls { XCTAssertGreaterThan(gpu.vulkanDispatches("matmul1_"), one, "\(label): one-row step without matmul1") }
                    XCTAssertEqual(gpu.vulkanDispatches("matmul_"), tiled, "\(label): a one-row step took the 32 x 32 tiled shader")
                    XCTAssertEqual(matvec(), vector, "\(label): a one-row step took the matrix x vector shader")
                    // The same row next to another sequence's: a two-row step, the tiled shader.
                    let tiledBefore = gpu.vulkanDispatches("matmul_")
                    let pair = try gpu.evaluateBatch([BatchSlice(cache: b, tokens: [306], wantsLogits: true, adapters: set),
                                                      BatchSlice(cache: other, tokens: [27], wantsLogits: true, adapters: set)])
                    if floatMatmuls { XCTAssertGreaterThan(gpu.vulkanDispatches("matmul_"), tiledBefore, label) }
                    let vocab = gpu.config.vocabSize
                    XCTAssertEqual(alone.count, vocab)
                    XCTAssertTrue(alone == Array(pair[0..<vocab]), "\(label): one-row step vs the same row in a two-row step differ")
                    XCTAssertFalse(alone == Array(pair[vocab..<2 * vocab]), "\(label): the two sequences' logits should differ")
                    // evaluate's decode keeps the matrix × vector path.
                    let before = gpu.vulkanDispatches("matvec_")
                    let onePath = gpu.vulkanDispatches("matmul1_")
                    let saved = gpu.activeAdapters
                    if let set { gpu.activeAdapters = set }
                    _ = try gpu.evaluate([27], cache: a)
                    gpu.activeAdapters = saved
                    XCTAssertGreaterThan(gpu.vulkanDispatches("matvec_"), before, label)
                    XCTAssertEqual(gpu.vulkanDispatches("matmul1_"), onePath, "\(label): evaluate's decode took matmul1")
                }
            }
        }
    }

    // MARK: - memory estimate

    /// `puna batch` / `puna serve --backend vulkan --parallel N`: the estimate counts each
    /// sequence's device KV cache (what VulkanKVCache really allocates, times N), the host caches
    /// only the CPU layers' rows (the GPU layers' host rows are never written), and the total grows
    /// with N; with --gpu-layers 1 of 2, half the rows on each side. The CLI's refusal names it.
    func testMemoryEstimateCountsEverySequencesDeviceCache() throws {
        _ = try requireDevice()
        let file = "tiny-gqa-q4_k_m.gguf"
        for gpuLayers in [-1, 1] {
            let gpu = try gpuModel(file, .baseline, batch: 8, gpuLayers: gpuLayers)
            let layers = gpu.config.blockCount
            let onGPU = gpuLayers < 0 ? layers : gpuLayers
            for type in [GGMLType.f16, .q8_0] {
                let cache = try gpu.makeCache(contextLength: 64, type: type)
                XCTAssertEqual(cache.deviceByteCount, 0, "no device cache before the first step")
                _ = try gpu.evaluateBatch([BatchSlice(cache: cache, tokens: [1, 450, 496], wantsLogits: true)])
                let device = cache.deviceByteCount
                XCTAssertEqual(device, cache.byteCount * onGPU / layers, "\(type.name), \(onGPU)/\(layers) layers on the GPU")
                var last = 0
                for n in [1, 2, 5] {
                    let e = gpu.memoryEstimate(context: 64, keyType: type, sequences: n)
                    XCTAssertEqual(e.bytes("gpu_kv_cache"), n * device, "\(type.name) --parallel \(n)")
                    XCTAssertEqual(e.bytes("kv_cache"), n * (cache.byteCount - device), "\(type.name) --parallel \(n)")
                    XCTAssertGreaterThan(e.totalBytes, last, "\(type.name): the estimate grows with --parallel")
                    last = e.totalBytes
                }
            }
        }
        // The same file on the CPU: no device item, every row on the host.
        let cpu = try LanguageModel(path: Self.path(file), options: ModelOptions(threads: 2, batchSize: 8))
        let cache = try cpu.makeCache(contextLength: 64, type: .f16)
        let e = cpu.memoryEstimate(context: 64, keyType: .f16, sequences: 3)
        XCTAssertEqual(e.bytes("gpu_kv_cache"), 0)
        XCTAssertEqual(e.bytes("kv_cache"), 3 * cache.byteCount)

        // The CLI: puna batch --backend vulkan --parallel 64 over a small budget lists the device caches.
        let input = dir.appendingPathComponent("mem.jsonl")
        try "{\"id\":\"a\",\"prompt\":\"hello\",\"max_tokens\":2}\n".write(to: input, atomically: true, encoding: .utf8)
        let (status, _, err) = try Fixtures.runPuna(["batch", "-m", Self.path("tiny-mha-q8_0.gguf"), "-i", input.path, "-o",
                                                     dir.appendingPathComponent("out.jsonl").path, "-c", "2048", "--parallel", "64",
                                                     "--mem", "40M", "--backend", "vulkan"])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(err.contains("KV cache on the Vulkan device ("), err)
        XCTAssertTrue(err.contains("layers, 64 sequences; device memory is host memory)"), err)
        XCTAssertTrue(err.contains("--parallel 64"), err)
    }

    // MARK: - puna batch

    /// `puna batch --backend vulkan` on the demo model (some records with its LoRA adapter, so
    /// adapter sets mix in a step) writes the greedy texts `--backend cpu` writes; --parallel 1
    /// with prompt chunks of 4 gives the same records as --parallel 3, sampled ones included.
    func testPunaBatchOnVulkanMatchesTheCPU() throws {
        let device = try requireDevice()
        let repo = Fixtures.root.deletingLastPathComponent().deletingLastPathComponent()
        let base = repo.appendingPathComponent("models/demo/fortune-llama-q8_0.gguf").path
        let adapter = repo.appendingPathComponent("models/demo/fortune-llama-qa-lora.gguf").path
        var lines: [String] = []
        let prompts = ["A computer is", "The best way to", "Never", "Who wrote the book about time?", "In the morning the cat",
                       "What is a fortune cookie?"]
        for (i, p) in prompts.enumerated() {
            var r: [String: Any] = ["id": "r\(i)", "prompt": p, "max_tokens": 8 + 2 * i, "temperature": 0]
            if i % 3 == 0 { r["adapter"] = "qa"; r["template"] = "guanaco" }
            lines.append(String(decoding: try JSONSerialization.data(withJSONObject: r, options: [.sortedKeys]), as: UTF8.self))
        }
        for i in 0..<2 {   // sampled: compared GPU against GPU only
            let r: [String: Any] = ["id": "s\(i)", "prompt": "Fortune says", "max_tokens": 10, "temperature": 0.8, "seed": 7 + i]
            lines.append(String(decoding: try JSONSerialization.data(withJSONObject: r, options: [.sortedKeys]), as: UTF8.self))
        }
        let input = dir.appendingPathComponent("in.jsonl")
        try (lines.joined(separator: "\n") + "\n").write(to: input, atomically: true, encoding: .utf8)

        func batch(_ name: String, _ extra: [String]) throws -> ([String: String], String) {
            let out = dir.appendingPathComponent(name).path
            let (status, _, err) = try Fixtures.runPuna(["batch", "-m", base, "--lora", "qa=\(adapter)", "-i", input.path, "-o", out,
                                                          "-t", "2"] + extra)
            XCTAssertEqual(status, 0, err)
            var texts: [String: String] = [:]
            for line in try String(contentsOfFile: out, encoding: .utf8).split(separator: "\n") {
                let r = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
                XCTAssertNil(r["error"], "\(r)")
                texts[r["id"] as! String] = "\(r["text"]!)|\(r["finish_reason"]!)|\(r["tokens_out"]!)"
            }
            XCTAssertEqual(texts.count, lines.count, err)
            return (texts, err)
        }
        // The CPU with the kernels whose arithmetic the device's default tier does: the reference
        // kernels (f32 products), or, where the int8 tier is picked, the default 8-bit ones.
        if device.tier != "int8" { setenv("PUNA_KERNELS", "reference", 1) }
        let (cpu, cpuErr) = try batch("cpu.jsonl", ["--parallel", "3"])
        unsetenv("PUNA_KERNELS")
        XCTAssertFalse(cpuErr.contains("vulkan"), cpuErr)
        let (gpu, gpuErr) = try batch("gpu.jsonl", ["--parallel", "3", "--backend", "vulkan"])
        XCTAssertTrue(gpuErr.contains("vulkan: device"), gpuErr)
        XCTAssertFalse(gpuErr.contains("running on the CPU"), gpuErr)
        for i in prompts.indices { XCTAssertEqual(gpu["r\(i)"], cpu["r\(i)"], "record r\(i): GPU vs CPU") }
        let (serial, serialErr) = try batch("gpu1.jsonl", ["--parallel", "1", "-b", "4", "--backend", "vulkan"])
        XCTAssertTrue(serialErr.contains("vulkan: device"), serialErr)
        XCTAssertEqual(serial, gpu, "--parallel 1 -b 4 vs --parallel 3 on the GPU")
        print("puna batch on Vulkan (\(device.tier) tier): \(gpu.count) records as on the CPU")
    }

    /// `puna serve --backend vulkan`: concurrent greedy completions (base and adapter, so they
    /// share steps) are `puna run`'s texts on the CPU (kernels as above).
    func testPunaServeOnVulkanMatchesPunaRun() throws {
        let device = try requireDevice()
        let requests: [(model: String, prompt: String)] = [("fortune-llama-q8_0", "The secret of happiness"), ("qa", "Who said that?"),
                                                           ("fortune-llama-q8_0", "A computer is"), ("qa", "The secret of happiness")]
        if device.tier != "int8" { setenv("PUNA_KERNELS", "reference", 1) }
        var expected: [String] = []
        for r in requests {
            let (status, out, err) = try Fixtures.runPuna(["run", "-m", ServeTests.base, "-p", r.prompt, "-n", "24", "--temp", "0",
                                                           "--template", "raw", "-t", "2"] + (r.model == "qa" ? ["--lora", ServeTests.adapter] : []))
            XCTAssertEqual(status, 0, err)
            expected.append(String(out.dropLast(out.hasSuffix("\n") ? 1 : 0)))   // puna run adds a newline
        }
        unsetenv("PUNA_KERNELS")
        let server = try ServeTests.Server(["--backend", "vulkan"], parallel: 3)
        var clients: [(Process, Pipe)] = []
        for r in requests {
            let body = String(decoding: try JSONSerialization.data(withJSONObject: ["model": r.model, "prompt": r.prompt, "max_tokens": 24,
                                                                                    "temperature": 0] as [String: Any]), as: UTF8.self)
            let p = Process(), out = Pipe()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
            p.arguments = ["-s", "--max-time", "120", "-H", "Content-Type: application/json", "-d", body,
                           "http://127.0.0.1:\(server.port)/v1/completions"]
            p.standardOutput = out
            try p.run()
            clients.append((p, out))
        }
        for (i, (p, out)) in clients.enumerated() {
            let data = out.fileHandleForReading.readDataToEndOfFile()
            p.waitUntilExit()
            let json = try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any], String(decoding: data, as: UTF8.self))
            let text = try XCTUnwrap((json["choices"] as? [[String: Any]])?.first?["text"] as? String, "\(json)")
            XCTAssertEqual(text, expected[i], "request \(i) (\(requests[i].model))")
        }
        XCTAssertEqual(server.stop(), 0)
        XCTAssertTrue(server.stderr.contains("vulkan: device"), server.stderr)
        XCTAssertFalse(server.stderr.contains("running on the CPU"), server.stderr)
    }
}
