import CPuna
import Foundation
import PunaCore
import XCTest

/// Every architecture family against transformers, on the tiny models that
/// scripts/fixtures/make_arch_models.py made with transformers → convert_hf_to_gguf.py →
/// llama-quantize (Tests/Fixtures/arch). References are transformers' logits on the weights decoded
/// from each file, so the tolerances measure Puna's arithmetic.
final class ArchitectureTests: XCTestCase {
    static let root = Fixtures.root.appendingPathComponent("arch")

    func manifest() throws -> [String: Any] { try Fixtures.json(ArchitectureTests.root.appendingPathComponent("manifest.json")) }

    func families() throws -> [[String: Any]] { try XCTUnwrap(manifest()["families"] as? [[String: Any]]) }

    func path(_ name: String) -> String { ArchitectureTests.root.appendingPathComponent(name).path }

    func referenceTokens() throws -> [Int32] {
        try XCTUnwrap((manifest()["reference"] as? [String: Any])?["tokens"] as? [Int]).map { Int32($0) }
    }

    func testLogitsMatchTransformersOnEveryFile() throws {
        let tokens = try referenceTokens()
        var report: [String] = []
        var checked = 0
        defer { puna_kernels_set_activation_levels(0) }
        for family in try families() {
            let name = family["family"] as! String
            for entry in family["files"] as! [[String: Any]] {
                let file = entry["file"] as! String, type = entry["type"] as! String
                let model = try LanguageModel(path: path(file), options: ModelOptions(threads: 2))
                XCTAssertEqual(model.config.architecture, family["architecture"] as? String, file)
                let expected = try Fixtures.floats(ArchitectureTests.root.appendingPathComponent(entry["logits"] as! String))
                for levels in [2, 1] {
                    puna_kernels_set_activation_levels(Int32(levels))
                    for cacheType in [GGMLType.f32, .f16] {
                        let logits = try model.evaluate(tokens, cache: model.makeCache(contextLength: 64, type: cacheType), allLogits: true)
                        let r = maxRelativeDifference(logits, expected)
                        let limit: Float = type == "f16" && cacheType == .f16 ? 2e-3 : ConformanceTests.tolerance(type, activationLevels: levels)
                        report.append("\(name) \(file) cache \(cacheType.name), \(levels) activation level(s): \(r)")
                        XCTAssertLessThanOrEqual(r, limit, "\(file) with \(cacheType.name) cache, \(levels) activation level(s)")
                    }
                }
                checked += 1
            }
        }
        print(report.joined(separator: "\n"))
        XCTAssertGreaterThanOrEqual(checked, 20)
    }

    /// Phi-3's long factors: a cache longer than the original context rotates with them.
    func testLongRoPEFactorsBeyondTheOriginalContext() throws {
        guard let phi = try families().first(where: { $0["family"] as? String == "phi3" }),
              let entry = (phi["files"] as! [[String: Any]]).first(where: { $0["type"] as? String == "f32" }),
              let long = (entry["long_factors"] as? [String: Any])?["logits"] as? String ?? entry["long_logits"] as? String else {
            throw XCTSkip("no long-factor reference in the manifest")
        }
        let model = try LanguageModel(path: path(entry["file"] as! String), options: ModelOptions(threads: 2))
        let expected = try Fixtures.floats(ArchitectureTests.root.appendingPathComponent(long))
        let longInfo = entry["long_factors"] as? [String: Any] ?? [:]
        let context = try XCTUnwrap(longInfo["llama_cpp_context"] as? Int)
        let logits = try model.evaluate(try referenceTokens(), cache: model.makeCache(contextLength: context, type: .f32), allLogits: true)
        let r = maxRelativeDifference(logits, expected)
        print("phi3 long factors (cache \(context)): \(r)")
        XCTAssertLessThanOrEqual(r, 1e-3)
    }

    func testGreedyGenerationMatchesTransformers() throws {
        let prompt = try XCTUnwrap((manifest()["greedy"] as? [String: Any])?["prompt_tokens"] as? [Int]).map { Int32($0) }
        var checked = 0
        for family in try families() {
            for entry in family["files"] as! [[String: Any]] where entry["type"] as? String == "f32" {
                let expected = try XCTUnwrap((entry["greedy"] as? [String: Any])?["tokens"] as? [Int]).map { Int32($0) }
                let model = try LanguageModel(path: path(entry["file"] as! String), options: ModelOptions(threads: 2))
                XCTAssertEqual(try Fixtures.greedy(model, prompt, count: expected.count), expected, entry["file"] as! String)
                checked += 1
            }
        }
        XCTAssertGreaterThanOrEqual(checked, 5)
    }

    /// A PEFT adapter on every projection (Phi-3: its fused names) and its GGUF conversion, applied
    /// unmerged and merged at load, against PeftModel before and after merge_and_unload().
    func testLoRAUnmergedAndMergedMatchPEFT() throws {
        let tokens = try referenceTokens()
        var report: [String] = []
        var checked = 0
        for family in try families() {
            guard let lora = family["lora"] as? [String: Any] else { continue }
            let name = family["family"] as! String
            let base = path(lora["base"] as! String)
            let peft = try Fixtures.floats(ArchitectureTests.root.appendingPathComponent(lora["peft_logits"] as! String))
            let merged = try Fixtures.floats(ArchitectureTests.root.appendingPathComponent(lora["merged_logits"] as! String))
            var adapters = [path(lora["peft_dir"] as! String)]
            if let gguf = lora["gguf"] as? String { adapters.append(path(gguf)) }
            for adapterPath in adapters {
                for merge in [false, true] {
                    let m = try LanguageModel(path: base, options: ModelOptions(threads: 2))
                    let adapter = try LoRAAdapter.load(path: adapterPath, for: m)
                    XCTAssertEqual(adapter.targets.count, m.config.blockCount * (lora["targets"] as! [String]).count, "\(name): \(adapter.targets)")
                    if merge { try m.mergeAdapters(AdapterSet([(adapter, 1)])) } else { m.activeAdapters = AdapterSet([(adapter, 1)]) }
                    let logits = try m.evaluate(tokens, cache: m.makeCache(contextLength: 64, type: .f32), allLogits: true)
                    let r = maxRelativeDifference(logits, merge ? merged : peft)
                    report.append("\(name) \(baseName(adapterPath)) \(merge ? "merged" : "unmerged"): \(r)")
                    XCTAssertLessThanOrEqual(r, 1e-3, "\(name) \(adapterPath) merged: \(merge)")
                    checked += 1
                }
            }
        }
        print(report.joined(separator: "\n"))
        XCTAssertGreaterThanOrEqual(checked, 8)
    }

    func baseName(_ p: String) -> String { URL(fileURLWithPath: p).lastPathComponent }

    /// `puna merge` writes a file of the base's architecture that loads and computes PEFT's merged logits.
    func testPunaMergeOnEveryFamily() throws {
        let tokens = try referenceTokens()
        var checked = 0
        for family in try families() {
            guard let lora = family["lora"] as? [String: Any] else { continue }
            let out = FileManager.default.temporaryDirectory.appendingPathComponent("puna-arch-merge-\(UUID().uuidString).gguf").path
            defer { try? FileManager.default.removeItem(atPath: out) }
            let (status, _, err) = try Fixtures.runPuna(["merge", "-m", path(lora["base"] as! String), "--lora", path(lora["peft_dir"] as! String), "-o", out])
            XCTAssertEqual(status, 0, err)
            let m = try LanguageModel(path: out, options: ModelOptions(threads: 2))
            XCTAssertEqual(m.config.architecture, family["architecture"] as? String)
            let logits = try m.evaluate(tokens, cache: m.makeCache(contextLength: 64, type: .f32), allLogits: true)
            let merged = try Fixtures.floats(ArchitectureTests.root.appendingPathComponent(lora["merged_logits"] as! String))
            XCTAssertLessThanOrEqual(maxRelativeDifference(logits, merged), 1e-3, family["family"] as! String)
            checked += 1
        }
        XCTAssertGreaterThanOrEqual(checked, 4)
    }

    /// Several sequences in one step (each with its own cache, some with an adapter) get exactly
    /// the logits they get alone, on every family and both cache types.
    func testBatchedLogitsEqualSingleSequenceBitForBit() throws {
        let sequences: [[Int32]] = [[1, 450, 496, 173, 170, 432, 172, 97, 33, 12], [1, 90, 250, 263, 31, 298, 27, 471], [1, 150]]
        let schedule: [[Int]] = [[3, 5, 1], [1, 0, 1], [2, 3, 0], [4, 0, 0]]
        for family in try families() {
            for entry in family["files"] as! [[String: Any]] where ["f32", "q8_0", "q4_k_m"].contains(entry["type"] as! String) {
                let file = path(entry["file"] as! String)
                let lora = (family["lora"] as? [String: Any]).map { path($0["peft_dir"] as! String) }
                for cacheType in [GGMLType.f32, .f16] {
                    let single = try LanguageModel(path: file, options: ModelOptions(threads: 1))
                    let batched = try LanguageModel(path: file, options: ModelOptions(threads: 2, batchSize: 3))
                    let sets: [AdapterSet] = try sequences.indices.map { i in
                        guard i == 1, let lora else { return .none }
                        return AdapterSet([(try LoRAAdapter.load(path: lora, for: batched), 1)])
                    }
                    let vocab = single.config.vocabSize
                    var reference: [[Float]] = []
                    for (i, s) in sequences.enumerated() {
                        if i == 1, let lora { single.activeAdapters = AdapterSet([(try LoRAAdapter.load(path: lora, for: single), 1)]) }
                        reference.append(try single.evaluate(s, cache: single.makeCache(contextLength: 32, type: cacheType), allLogits: true))
                        single.activeAdapters = .none
                    }
                    let caches = try sequences.map { _ in try batched.makeCache(contextLength: 32, type: cacheType) }
                    var done = [0, 0, 0]
                    for step in schedule {
                        var slices: [BatchSlice] = [], owners: [Int] = []
                        for (i, n) in step.enumerated() where n > 0 {
                            slices.append(BatchSlice(cache: caches[i], tokens: Array(sequences[i][done[i]..<(done[i] + n)]), wantsLogits: true, adapters: sets[i]))
                            owners.append(i)
                        }
                        let logits = try batched.evaluateBatch(slices)
                        for (row, (slice, i)) in zip(slices, owners).enumerated() {
                            done[i] += slice.tokens.count
                            let got = Array(logits[(row * vocab)..<((row + 1) * vocab)])
                            let want = Array(reference[i][((done[i] - 1) * vocab)..<(done[i] * vocab)])
                            XCTAssertTrue(got == want, "\(entry["file"]!) \(cacheType.name): sequence \(i) at position \(done[i] - 1) differs by \(maxRelativeDifference(got, want))")
                        }
                    }
                    XCTAssertEqual(done, sequences.map { $0.count })
                }
            }
        }
    }

    /// `puna info` names the architecture and its layer's parts; the estimate it prints holds for
    /// a real run's peak RSS on every family (release builds, as scripts/test runs them).
    func testInfoAndMemoryEstimateOnEveryFamily() throws {
        var prompt = ""
        for i in 0..<40 { prompt += "word\(i % 37) " }
        let promptFile = FileManager.default.temporaryDirectory.appendingPathComponent("arch-prompt-\(UUID().uuidString).txt")
        try prompt.write(to: promptFile, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: promptFile) }
        for family in try families() {
            let entry = (family["files"] as! [[String: Any]]).first { $0["type"] as? String == "q8_0" } ?? (family["files"] as! [[String: Any]])[0]
            let file = path(entry["file"] as! String)
            let common = ["-m", file, "-c", "256", "-b", "256", "-t", "2"]
            let (s1, o1, e1) = try Fixtures.runPuna(["info", "--json"] + common)
            XCTAssertEqual(s1, 0, e1)
            let info = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(o1.utf8)) as? [String: Any])
            XCTAssertEqual(info["architecture"] as? String, family["architecture"] as? String)
            let features = info["features"] as? [String] ?? []
            switch family["family"] as! String {
            case "qwen2": XCTAssertTrue(features.contains("Q/K/V biases"), "\(features)")
            case "qwen3": XCTAssertTrue(features.contains("per-head Q/K RMSNorm"), "\(features)")
            case "phi3": XCTAssertTrue(features.contains("fused QKV") && features.contains("fused gate/up"), "\(features)")
            case "llama3": XCTAssertTrue(features.contains { $0.hasPrefix("RoPE frequency factors") }, "\(features)")
            case "mistral": XCTAssertTrue(features.contains { $0.hasPrefix("sliding-window attention") }, "\(features)")
            case "gemma2":
                for f in ["post-norms after attention and feed-forward", "GeGLU (tanh GELU)", "embeddings × 16.0",
                          "attention soft-cap 5.0", "final logit soft-cap 15.0", "local layers: all but every 2th",
                          "sliding-window attention (32)", "tied embeddings"] {
                    XCTAssertTrue(features.contains(f), "\(f) not in \(features)")
                }
            case "gemma3":
                for f in ["per-head Q/K RMSNorm", "local layers: all but every 6th", "local layers' RoPE base 10000.0",
                          "linear RoPE scaling ×8.0", "sliding-window attention (32)"] {
                    XCTAssertTrue(features.contains(f), "\(f) not in \(features)")
                }
            case "bloom":
                for f in ["ALiBi (no RoPE)", "LayerNorm with bias", "fused QKV", "GELU feed-forward without gate", "tied embeddings"] {
                    XCTAssertTrue(features.contains(f), "\(f) not in \(features)")
                }
            default: break
            }
            let estimate = Double(try XCTUnwrap(info["estimated_bytes"] as? Int)) / 1048576
            let (s2, _, e2) = try Fixtures.runPuna(["run", "-f", promptFile.path, "-n", "1", "--temp", "0"] + common)
            XCTAssertEqual(s2, 0, e2)
            guard let r = e2.range(of: "peak RSS ") else { XCTFail(e2); continue }
            let peak = Double(e2[r.upperBound...].prefix { "0123456789.".contains($0) }) ?? 0
            print("\(family["family"]!) \(entry["file"]!): estimate \(estimate) MiB, peak RSS \(peak) MiB")
            #if !DEBUG
            XCTAssertEqual(estimate, peak, accuracy: 0.1 * peak, "\(entry["file"]!): estimate \(estimate) MiB, peak RSS \(peak) MiB")
            #endif
        }
    }

    /// Gemma 2 and 3 over 200 tokens with a window of 32 (where implementations go wrong): the full
    /// cache in one step, the cache a long context gets (rings on the local layers) in steps of 7,
    /// and token by token, against transformers.
    func testContextLongerThanTheSlidingWindowMatchesTransformers() throws {
        var checked = 0
        for family in try families() {
            for entry in family["files"] as! [[String: Any]] {
                guard let long = entry["long_context"] as? [String: Any] else { continue }
                let name = entry["file"] as! String
                let tokens = (long["tokens"] as! [Int]).map { Int32($0) }
                let window = long["window"] as! Int
                let expected = try Fixtures.floats(ArchitectureTests.root.appendingPathComponent(long["logits"] as! String))
                let model = try LanguageModel(path: path(name), options: ModelOptions(threads: 2, batchSize: 7))
                let c = model.config
                XCTAssertEqual(c.slidingWindow, window, name)
                let whole = try model.evaluate(tokens, cache: model.makeCache(contextLength: 256, type: .f32), allLogits: true)
                let ringCache = try model.makeCache(contextLength: 8192, type: .f32)
                let local = (0..<c.blockCount).filter { c.isLocal(layer: $0) }
                XCTAssertFalse(local.isEmpty, name)
                XCTAssertLessThan(local.count, c.blockCount, "\(name): a global layer is expected")
                for layer in 0..<c.blockCount {
                    // local layers keep window + step - 1 + the rewind margin rows, global ones all (0: no ring)
                    XCTAssertEqual(ringCache.ringRows[layer], local.contains(layer) ? window + 7 - 1 + KVCache.rewindRows : 0, "\(name) layer \(layer)")
                }
                let ringed = try model.evaluate(tokens, cache: ringCache, allLogits: true)
                let stepCache = try model.makeCache(contextLength: 8192, type: .f32)
                var oneByOne: [Float] = []
                for t in tokens { oneByOne += try model.evaluate([t], cache: stepCache) }
                for (what, got) in [("full cache", whole), ("rings, steps of 7", ringed), ("rings, one token at a time", oneByOne)] {
                    let r = maxRelativeDifference(got, expected)
                    print("\(name) \(tokens.count) tokens, window \(window), \(what): \(r)")
                    XCTAssertLessThanOrEqual(r, 1e-3, "\(name) \(what)")
                }
                checked += 1
            }
        }
        XCTAssertGreaterThanOrEqual(checked, 2)
    }

    /// The BLOOM file's byte-level BPE (`pre = bloom`) gives the Hugging Face tokenizer's ids (which
    /// llama-tokenize also gave when the fixture was made), and decodes them back to the text.
    func testBloomTokenizerMatchesHuggingFace() throws {
        let bloom = try XCTUnwrap(try families().first { $0["family"] as? String == "bloom" })
        let entry = (bloom["files"] as! [[String: Any]])[0]
        let gguf = try GGUFFile(path: path(entry["file"] as! String))
        let tokenizer = try Tokenizer(gguf: gguf)
        let vectors = try XCTUnwrap(entry["tokenizer_vectors"] as? [[String: Any]])
        for v in vectors {
            let text = v["text"] as! String
            let ids = tokenizer.encode(text, addBOS: false)
            XCTAssertEqual(ids.map(Int.init), v["ids"] as! [Int], text)
            XCTAssertEqual(tokenizer.decode(ids), text)
        }
        XCTAssertGreaterThanOrEqual(vectors.count, 6)
    }

    /// `puna perplexity` against llama.cpp's `llama-perplexity` on the same Gemma files and text
    /// (recorded by make_arch_models.py), within 1%.
    func testPerplexityAgreesWithLlamaCpp() throws {
        var checked = 0
        for family in try families() {
            for entry in family["files"] as! [[String: Any]] {
                guard let ref = entry["llama_perplexity"] as? [String: Any], let want = ref["perplexity"] as? Double else { continue }
                let (status, out, err) = try Fixtures.runPuna(["perplexity", "-m", path(entry["file"] as! String), "-f", path(ref["text"] as! String),
                                                                "-c", "\(ref["ctx"] as! Int)", "--json"])
                XCTAssertEqual(status, 0, err)
                let result = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
                let got = try XCTUnwrap(result["perplexity"] as? Double)
                print("\(entry["file"]!): puna perplexity \(got), llama-perplexity \(want), ratio \(got / want)")
                XCTAssertEqual(got, want, accuracy: 0.01 * want, entry["file"] as! String)
                checked += 1
            }
        }
        XCTAssertGreaterThanOrEqual(checked, 4)
    }

    /// Mistral's window (6 positions in the fixture) through a ring of 8 rows per layer: the same
    /// logits as the full cache and transformers, token by token and in steps of 3; steps the
    /// ring cannot hold and rewinds past what it keeps are errors.
    func testSlidingWindowRingMatchesTheFullCache() throws {
        guard let mistral = try families().first(where: { $0["family"] as? String == "mistral" }) else { throw XCTSkip("no mistral fixture") }
        let entry = (mistral["files"] as! [[String: Any]]).first { $0["type"] as? String == "f32" }!
        let expected = try Fixtures.floats(ArchitectureTests.root.appendingPathComponent(entry["logits"] as! String))
        let tokens = try referenceTokens()
        let model = try LanguageModel(path: path(entry["file"] as! String), options: ModelOptions(threads: 2, batchSize: 3))
        XCTAssertEqual(model.config.slidingWindow, 6)
        let c = model.config
        func ring() throws -> KVCache {
            try KVCache(layers: c.blockCount, capacity: 64, kvDimension: c.kvDimension, type: .f32, ringRows: [Int](repeating: 8, count: c.blockCount))
        }
        let full = try model.evaluate(tokens, cache: model.makeCache(contextLength: 64, type: .f32), allLogits: true)
        let stepped = try model.evaluate(tokens, cache: ring(), allLogits: true)
        let cache = try ring()
        var oneByOne: [Float] = []
        for t in tokens { oneByOne += try model.evaluate([t], cache: cache) }
        XCTAssertLessThanOrEqual(maxRelativeDifference(stepped, full), 1e-6)
        XCTAssertLessThanOrEqual(maxRelativeDifference(oneByOne, full), 1e-6)
        XCTAssertLessThanOrEqual(maxRelativeDifference(stepped, expected), 1e-3)
        // A step longer than the ring holds, and a rewind past the ring's rows, are refused.
        let small = try KVCache(layers: c.blockCount, capacity: 64, kvDimension: c.kvDimension, type: .f32, ringRows: [Int](repeating: 7, count: c.blockCount))
        XCTAssertThrowsError(try model.evaluate(Array(tokens.prefix(3)), cache: small)) { e in
            XCTAssertTrue((e as! PunaError).message.contains("sliding-window KV ring"), "\(e)")
        }
        cache.truncate(to: 4)
        XCTAssertThrowsError(try model.evaluate([tokens[4]], cache: cache)) { e in
            XCTAssertTrue((e as! PunaError).message.contains("rewound past"), "\(e)")
        }
        // The cache a model makes for a long context keeps a ring on windowed layers, and says so.
        let long = try model.makeCache(contextLength: 4096, type: .f16)
        XCTAssertEqual(long.ringRows, [Int](repeating: 6 + 3 - 1 + KVCache.rewindRows, count: c.blockCount))
        XCTAssertLessThan(long.byteCount, try KVCache(layers: c.blockCount, capacity: 4096, kvDimension: c.kvDimension, type: .f16).byteCount / 8)
        let estimate = model.memoryEstimate(context: 4096)
        XCTAssertEqual(estimate.bytes("kv_cache"), long.byteCount)
    }
}
