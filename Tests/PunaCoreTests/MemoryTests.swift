import Foundation
@_spi(Testing) import PunaCore
import XCTest

/// The memory estimate against what Puna really allocates, the --mem budget and its refusal, and a
/// run under a cgroup memory limit through scripts/mem-check (issue 6).
final class MemoryTests: XCTestCase {
    static let repoRoot = Fixtures.root.deletingLastPathComponent().deletingLastPathComponent()
    static let loraDir = Fixtures.root.appendingPathComponent("lora")

    func model(_ name: String) -> String { Fixtures.models.appendingPathComponent(name).path }
    func adapter(_ name: String) -> String { Self.loraDir.appendingPathComponent(name).path }

    /// A model is read ahead in a few requests per file (GGUF, or Hugging Face shard): every tensor
    /// the model reads lies inside one, and an embedding read one row at a time (untied output head)
    /// in none; a tied one is read ahead like the rest.
    func testReadAheadCoversTheWeightsButAnUntiedEmbedding() throws {
        let hf = Fixtures.root.appendingPathComponent("hf")
        let cases = [(hf.appendingPathComponent("llama-nf4-dq").path, false), (hf.appendingPathComponent("qwen2-nf4-dq").path, true),
                     (hf.appendingPathComponent("llama-f16").path, false), (model("tiny-mha-q4_0.gguf"), false),
                     (model("tiny-tied-f16.gguf"), true)]
        for (path, tied) in cases {
            let model = try LanguageModel(path: path, options: ModelOptions(threads: 1))
            XCTAssertEqual(model.gguf.tensorInfo("output.weight") == nil, tied, path)
            let ranges = model.readAheadRanges()
            XCTAssertLessThanOrEqual(ranges.count, 2 * model.gguf.files.count, path)
            for t in model.gguf.tensors {
                let inside = ranges.contains { $0.source == t.source && $0.start <= t.offset && t.offset + t.byteCount <= $0.end }
                let touched = ranges.contains { $0.source == t.source && $0.start < t.offset + t.byteCount && t.offset < $0.end }
                if t.name == "token_embd.weight" && !tied {
                    XCTAssertFalse(touched, "\(path): the embedding is read ahead")
                } else {
                    XCTAssertTrue(inside, "\(path): \(t.name) is not read ahead")
                }
            }
        }
    }

    func testParseSize() {
        let g = 1 << 30
        XCTAssertEqual(MemoryEstimate.parseSize("4.5G"), g * 9 / 2)
        XCTAssertEqual(MemoryEstimate.parseSize("4.25GiB"), g * 17 / 4)
        XCTAssertEqual(MemoryEstimate.parseSize("4500M"), 4500 << 20)
        XCTAssertEqual(MemoryEstimate.parseSize("4718592K"), 4718592 << 10)
        XCTAssertEqual(MemoryEstimate.parseSize("3g"), 3 * g)
        XCTAssertEqual(MemoryEstimate.parseSize("512mb"), 512 << 20)
        XCTAssertEqual(MemoryEstimate.parseSize("1000000"), 1_000_000)
        XCTAssertEqual(MemoryEstimate.parseSize("1T"), 1 << 40)
        for bad in ["", "G", "abc", "4.5X", "-1G", "1.2.3G", "4 G", "1e3"] {
            XCTAssertNil(MemoryEstimate.parseSize(bad), bad)
        }
    }

    /// The KV cache item is what KVCache allocates, for every supported type and both head layouts.
    func testKVCacheItemEqualsAllocation() throws {
        for file in ["tiny-mha-f32.gguf", "tiny-gqa-q8_0.gguf"] {
            let m = try LanguageModel(path: model(file), options: ModelOptions(threads: 1))
            for type in KVCache.supportedTypes {
                for context in [1, 96, 1024] {
                    let cache = try m.makeCache(contextLength: context, type: type)
                    let e = m.memoryEstimate(context: context, keyType: type)
                    XCTAssertEqual(e.bytes("kv_cache"), cache.byteCount, "\(file) \(type.name) \(context)")
                    let three = m.memoryEstimate(context: context, keyType: type, sequences: 3)
                    XCTAssertEqual(three.bytes("kv_cache"), 3 * cache.byteCount)
                }
            }
        }
        // Separate K and V types are counted separately: f32 K + f16 V is 3/4 of f32 + f32.
        let c = try ModelConfig(gguf: GGUFFile(path: model("tiny-gqa-f32.gguf")))
        let mixed = MemoryEstimate.llama(config: c, weightBytes: 0, settings: .init(context: 64, keyType: .f32, valueType: .f16))
        let both = MemoryEstimate.llama(config: c, weightBytes: 0, settings: .init(context: 64, keyType: .f32))
        XCTAssertEqual(mixed.bytes("kv_cache") * 4, both.bytes("kv_cache") * 3)
        XCTAssertTrue(mixed.items.contains { $0.name.contains("K f32 + V f16") })
    }

    /// Adapter and merged-tensor items, estimated from the files before loading, equal what
    /// loading the adapters and merging them really maps and allocates.
    func testAdapterAndMergedItemsEqualWhatIsLoaded() throws {
        let base = model("tiny-gqa-q8_0.gguf")
        let gguf = try GGUFFile(path: base)
        let config = try ModelConfig(gguf: gguf)
        for name in ["gqa-all", "gqa-alpaca", "gqa-all.gguf"] {
            let footprint = MemoryEstimate.AdapterFootprint(try LoRAAdapter.inspect(path: adapter(name)))
            var settings = MemoryEstimate.Settings(context: 128, adapters: [footprint])
            let unmerged = MemoryEstimate.llama(gguf: gguf, config: config, settings: settings)
            settings.mergeAdapters = true
            let merged = MemoryEstimate.llama(gguf: gguf, config: config, settings: settings)

            let m = try LanguageModel(path: base, options: ModelOptions(threads: 1))
            let loaded = try LoRAAdapter.load(path: adapter(name), for: m)
            var tables = 0
            for w in loaded.weights.values { tables += 8 * (w.outputRows?.count ?? 0) }
            XCTAssertEqual(unmerged.bytes("adapters"), loaded.tensorBytes + tables, name)
            XCTAssertEqual(unmerged.bytes("merged_weights"), 0)

            try m.mergeAdapters(AdapterSet([(loaded, 1)]))
            XCTAssertGreaterThan(m.mergedWeightBytes, 0)
            XCTAssertEqual(merged.bytes("merged_weights"), m.mergedWeightBytes, name)
            XCTAssertEqual(merged.bytes("weights"), gguf.file.count - m.mergedWeightBytes, name)
            XCTAssertEqual(merged.bytes("adapters"), 0, "merged adapters are not kept mapped")
            // The loaded model's own estimate agrees once the load-time merge buffers are left out.
            let after = m.memoryEstimate(context: 128)
            XCTAssertEqual(after.totalBytes, merged.totalBytes - merged.bytes("merge_work"), name)
            m.releaseReplacedWeights()  // a hint: must not disturb the merged model
            XCTAssertFalse(try m.evaluate([1, 2, 3], cache: m.makeCache(contextLength: 4)).contains { !$0.isFinite })
        }
    }

    /// A whole `puna run` peaks at the estimate `puna info` gives for the same settings: the prompt
    /// (1978 tokens) nearly fills the 2048-position cache, so every item is really touched. Two
    /// batch sizes change the activations by ~17 MiB; the peaks move by the same amount.
    func testEstimateMatchesPeakRSS() throws {
        let file = model("tiny-gqa-q8_0.gguf")
        let prompt = String(repeating: "The licensee may copy and distribute the work in any medium, provided that the notice is kept. ", count: 52)
        let promptFile = FileManager.default.temporaryDirectory.appendingPathComponent("memory-prompt-\(UUID().uuidString).txt")
        try prompt.write(to: promptFile, atomically: true, encoding: .utf8)
        addTeardownBlock { try? FileManager.default.removeItem(at: promptFile) }

        var results: [(estimate: Double, peak: Double)] = []
        for batch in ["2048", "128"] {
            let common = ["-m", file, "-c", "2048", "-b", batch, "-t", "2"]
            let (s1, o1, e1) = try Fixtures.runPuna(["info", "--json"] + common)
            XCTAssertEqual(s1, 0, e1)
            let info = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(o1.utf8)) as? [String: Any])
            let estimate = Double(try XCTUnwrap(info["estimated_bytes"] as? Int)) / 1048576
            let (s2, _, e2) = try Fixtures.runPuna(["run", "-f", promptFile.path, "-n", "1", "--temp", "0"] + common)
            XCTAssertEqual(s2, 0, e2)
            XCTAssertTrue(e2.contains("prompt 1978 tok"), e2)
            let peak = try XCTUnwrap(peakRSS(e2), e2)
            results.append((estimate, peak))
            XCTAssertEqual(estimate, peak, accuracy: 0.08 * peak, "batch \(batch): estimate \(estimate) MiB, peak RSS \(peak) MiB")
        }
        let estimated = results[0].estimate - results[1].estimate, measured = results[0].peak - results[1].peak
        XCTAssertGreaterThan(estimated, 10)
        XCTAssertEqual(estimated, measured, accuracy: 0.1 * estimated, "activations: estimated +\(estimated) MiB, measured +\(measured) MiB")
    }

    /// "peak RSS 31.27 MiB" in the timing line, in MiB.
    func peakRSS(_ stderr: String) -> Double? {
        guard let r = stderr.range(of: "peak RSS ") else { return nil }
        let parts = stderr[r.upperBound...].split(separator: " ")
        guard parts.count >= 2, let v = Double(parts[0]) else { return nil }
        switch parts[1].prefix(3) {
        case "KiB": return v / 1024
        case "MiB": return v
        case "GiB": return v * 1024
        default: return nil
        }
    }

    /// `puna info` counts adapters (mapped or merged), the cache type and the threads.
    func testInfoEstimateFollowsFlags() throws {
        let base = model("tiny-gqa-q8_0.gguf")
        func estimate(_ extra: [String]) throws -> [String: Int] {
            let (s, o, e) = try Fixtures.runPuna(["info", "-m", base, "--json", "-c", "512"] + extra)
            XCTAssertEqual(s, 0, e)
            let j = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(o.utf8)) as? [String: Any])
            var items = try XCTUnwrap(j["estimate"] as? [String: Int])
            items["total"] = try XCTUnwrap(j["estimated_bytes"] as? Int)
            return items
        }
        let plain = try estimate([])
        let f32 = try estimate(["-ctk", "f32"])
        XCTAssertEqual(f32["kv_cache"], 2 * plain["kv_cache"]!)
        let withAdapter = try estimate(["--lora", adapter("gqa-all")])
        let inspected = try LoRAAdapter.inspect(path: adapter("gqa-all"))
        XCTAssertGreaterThanOrEqual(withAdapter["adapters"]!, inspected.tensorBytes)
        XCTAssertGreaterThan(withAdapter["total"]!, plain["total"]! + inspected.tensorBytes)
        let merged = try estimate(["--lora", adapter("gqa-all"), "--merge-lora"])
        XCTAssertNil(merged["adapters"])
        XCTAssertGreaterThan(merged["merged_weights"]!, 0)
        XCTAssertEqual(merged["weights"]! + merged["merged_weights"]!, plain["weights"]!)
        let threads = try estimate(["-t", "8"])
        XCTAssertGreaterThan(threads["thread_buffers"]!, try estimate(["-t", "1"])["thread_buffers"]!)
        // Without a run flag, --lora still describes the adapter (an array of adapters).
        let (s, o, _) = try Fixtures.runPuna(["info", "-m", base, "--json", "--lora", adapter("gqa-all")])
        XCTAssertEqual(s, 0)
        XCTAssertTrue(o.hasPrefix("["), o)
    }

    /// Over budget: refused before loading, exit ≠ 0, every item of the breakdown named, advice given.
    func testMemBudgetRefusesWithBreakdown() throws {
        let base = model("tiny-gqa-q8_0.gguf")
        let (status, out, err) = try Fixtures.runPuna(["run", "-m", base, "-p", "The licensee may", "-c", "1024", "-t", "2", "--mem", "12M"])
        XCTAssertNotEqual(status, 0)
        XCTAssertEqual(out, "")
        XCTAssertTrue(err.contains("budget is 12.00 MiB (--mem 12M); refusing before loading"), err)
        for item in ["model file, memory-mapped", "KV cache (f16, 1024 positions)", "activations (batch 256)", "thread pool buffers (2 threads",
                     "norms, tokenizer, sampler", "program (code, libraries", "total"] {
            XCTAssertTrue(err.contains(item), "missing '\(item)' in: \(err)")
        }
        XCTAssertTrue(err.contains("to fit in 12.00 MiB:"), err)
        XCTAssertTrue(err.contains("-c ") || err.contains("-b 32"), "concrete advice: \(err)")

        // A budget the weights alone exceed says so.
        let (s2, _, e2) = try Fixtures.runPuna(["run", "-m", base, "-p", "x", "--mem", "1M"])
        XCTAssertNotEqual(s2, 0)
        XCTAssertTrue(e2.contains("the weights alone take"), e2)

        // An enormous context is refused without allocating it.
        let (s3, _, e3) = try Fixtures.runPuna(["run", "-m", base, "-p", "x", "-c", "1000000000"])
        XCTAssertNotEqual(s3, 0)
        XCTAssertTrue(e3.contains("refusing before loading") && e3.contains("KV cache"), e3)

        // Adapters are in the breakdown, and merging is offered when it is smaller.
        let (s4, _, e4) = try Fixtures.runPuna(["run", "-m", base, "-p", "x", "--lora", adapter("gqa-all"), "--mem", "12M"])
        XCTAssertNotEqual(s4, 0)
        XCTAssertTrue(e4.contains("LoRA adapter gqa-all (memory-mapped, rank 8"), e4)

        // A budget that fits runs.
        let (s5, _, e5) = try Fixtures.runPuna(["run", "-m", base, "-p", "x", "-n", "2", "--mem", "1G"])
        XCTAssertEqual(s5, 0, e5)
    }

    func testBadMemoryFlags() throws {
        let base = model("tiny-gqa-q8_0.gguf")
        for (args, message) in [
            (["--mem", "lots"], "flag --mem: 'lots' is not a memory size"),
            (["--mem", "0"], "flag --mem: '0' is not a memory size"),
            (["-ctk", "q4_7"], "flag --cache-type-k: unknown type 'q4_7'"),
            (["-ctk", "q4_0"], "flag --cache-type-k: q4_0 is not supported for the KV cache"),
            (["-ctk", "f16", "-ctv", "f32"], "flag --cache-type-v: 'f32' differs from --cache-type-k"),
        ] {
            let (status, _, err) = try Fixtures.runPuna(["run", "-m", base, "-p", "x"] + args)
            XCTAssertNotEqual(status, 0, "\(args)")
            XCTAssertTrue(err.contains(message), "\(args): \(err)")
        }
    }

    /// --mlock locks the mapped weights, or says why it cannot (no root, small ulimit -l).
    func testMlock() throws {
        let (status, out, err) = try Fixtures.runPuna(["run", "-m", model("tiny-gqa-q8_0.gguf"), "-p", "The licensee may", "-n", "4",
                                                       "--temp", "0", "--mlock"])
        if status == 0 {
            XCTAssertFalse(out.isEmpty)
        } else {
            XCTAssertTrue(err.contains("flag --mlock:") && err.contains("ulimit -l"), err)
        }
    }

    /// scripts/mem-check (needs root and a cgroup memory controller; skipped otherwise): a tiny model
    /// passes under 64 MiB with its peak and tok/s reported; a command that needs more is OOM-killed
    /// and reported as such; Puna under a limit below its estimate refuses instead of being killed.
    func testMemCheckUnderCgroupLimit() throws {
        let script = Self.repoRoot.appendingPathComponent("scripts/mem-check").path
        let probe = try run(script, ["-l", "64M", "-q", "--", "true"])
        if probe.status == 2 { throw XCTSkip("mem-check cannot run here: \(probe.err)") }
        XCTAssertEqual(probe.status, 0, probe.err)

        let json = FileManager.default.temporaryDirectory.appendingPathComponent("mem-check-\(UUID().uuidString).json")
        addTeardownBlock { try? FileManager.default.removeItem(at: json) }
        let puna = Fixtures.punaBinary.path
        let ok = try run(script, ["-l", "64M", "--json", json.path, "-q", "--", puna, "run", "-m", model("tiny-gqa-q8_0.gguf"),
                                  "-p", "The licensee may", "-n", "16", "--temp", "0", "-c", "256"])
        XCTAssertEqual(ok.status, 0, ok.err)
        XCTAssertTrue(ok.err.contains("mem-check: PASS"), ok.err)
        let report = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: json)) as? [String: Any])
        XCTAssertEqual(report["verdict"] as? String, "PASS")
        XCTAssertEqual(report["limit_bytes"] as? Int, 64 << 20)
        let peak = try XCTUnwrap(report["peak_bytes"] as? Int)
        XCTAssertTrue(peak > 0 && peak <= 64 << 20, "\(peak)")
        XCTAssertGreaterThan(try XCTUnwrap(report["decode_tok_s"] as? Double), 0)

        let oom = try run(script, ["-l", "16M", "-q", "--", "/bin/bash", "-c", "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo ${#x}"])
        XCTAssertEqual(oom.status, 137, oom.err)
        XCTAssertTrue(oom.err.contains("mem-check: FAIL: OOM-killed"), oom.err)

        // Puna reads the cgroup limit: a context that cannot fit is refused, not OOM-killed.
        let refused = try run(script, ["-l", "24M", "-q", "--", puna, "run", "-m", model("tiny-gqa-q8_0.gguf"), "-p", "x", "-c", "65536"])
        XCTAssertEqual(refused.status, 1, refused.err)
        XCTAssertTrue(refused.err.contains("FAIL: exit status 1"), refused.err)
        XCTAssertFalse(refused.err.contains("OOM"), refused.err)
    }

    func run(_ executable: String, _ arguments: [String]) throws -> (status: Int32, err: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = arguments
        let err = Pipe()
        p.standardError = err
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        let data = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }
}
