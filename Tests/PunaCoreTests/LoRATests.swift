import CPuna
import Foundation
@_spi(Testing) import PunaCore
import XCTest

/// LoRA adapters against transformers + PEFT (scripts/fixtures/make_lora.py): PEFT folders and GGUF
/// LoRAs from llama.cpp's convert_lora_to_gguf.py, applied per token and merged, on F32 and
/// quantized bases; `puna merge`; bad input.
final class LoRATests: XCTestCase {
    static let dir = Fixtures.root.appendingPathComponent("lora")
    /// Unmerged and merged adapters on an F32 base: max|Puna − reference| / max|reference| (issue 4).
    static let tolerance: Float = 1e-3

    func manifest() throws -> [String: Any] { try Fixtures.json(Self.dir.appendingPathComponent("manifest.json")) }
    func tokens() throws -> [Int32] { try XCTUnwrap(manifest()["tokens"] as? [Int]).map { Int32($0) } }
    func adapters() throws -> [[String: Any]] { try XCTUnwrap(manifest()["adapters"] as? [[String: Any]]) }
    func path(_ relative: String) -> String { Self.dir.appendingPathComponent(relative).standardized.path }
    func reference(_ file: String) throws -> [Float] { try Fixtures.floats(Self.dir.appendingPathComponent(file)) }

    /// max|a − b| / max|b|.
    func relative(_ a: [Float], _ b: [Float]) -> Float {
        XCTAssertEqual(a.count, b.count)
        var worst: Float = 0, scale: Float = 0
        for i in 0..<min(a.count, b.count) {
            worst = max(worst, abs(a[i] - b[i]))
            scale = max(scale, abs(b[i]))
        }
        return worst / scale
    }

    func model(_ base: String, threads: Int = 2) throws -> LanguageModel {
        try LanguageModel(path: path(base), options: ModelOptions(threads: threads))
    }

    func logits(_ model: LanguageModel) throws -> [Float] {
        let t = try tokens()
        return try model.evaluate(t, cache: model.makeCache(contextLength: t.count, type: .f32), allLogits: true)
    }

    // MARK: golden logits

    func testUnmergedPEFTFoldersMatchPeftModel() throws {
        var report: [String] = []
        for entry in try adapters() {
            let name = entry["name"] as! String
            let m = try model(entry["base"] as! String)
            let expected = try reference(entry["peft_logits"] as! String)
            // The adapter must matter: without it the logits are far from the reference.
            let without = relative(try logits(m), expected)
            XCTAssertGreaterThan(without, 0.1, "\(name) barely changes the logits; the test would prove nothing")
            let adapter = try LoRAAdapter.load(path: path(entry["peft_folder"] as! String), for: m)
            XCTAssertEqual(adapter.format, .peft)
            XCTAssertEqual(adapter.rank, entry["r"] as? Int)
            let alpha = Float(entry["alpha"] as! Int), r = Float(entry["r"] as! Int)
            XCTAssertEqual(adapter.baseScale, (entry["rslora"] as! Bool) ? alpha / r.squareRoot() : alpha / r, accuracy: 1e-6)
            m.activeAdapters = AdapterSet([(adapter, 1)])
            let diff = relative(try logits(m), expected)
            report.append("\(name) (PEFT, \(entry["dtype"]!)) unmerged: \(diff) (without adapter: \(without))")
            XCTAssertLessThanOrEqual(diff, Self.tolerance, name)
        }
        print(report.joined(separator: "\n"))
    }

    func testUnmergedGGUFLoRAsMatchPeftModel() throws {
        var report: [String] = []
        var checked = 0
        for entry in try adapters() {
            guard let gguf = entry["gguf"] as? String else { continue }
            let name = entry["name"] as! String
            let m = try model(entry["base"] as! String)
            let adapter = try LoRAAdapter.load(path: path(gguf), for: m)
            XCTAssertEqual(adapter.format, .gguf)
            XCTAssertEqual(adapter.alpha, Float(entry["alpha"] as! Int))
            m.activeAdapters = AdapterSet([(adapter, 1)])
            let diff = relative(try logits(m), try reference(entry["peft_logits"] as! String))
            report.append("\(name) (GGUF \(entry["gguf_outtype"]!)) unmerged: \(diff)")
            XCTAssertLessThanOrEqual(diff, Self.tolerance, name)
            checked += 1
        }
        XCTAssertGreaterThanOrEqual(checked, 3)
        print(report.joined(separator: "\n"))
    }

    func testMergedAtLoadMatchesMergeAndUnload() throws {
        var report: [String] = []
        for entry in try adapters() {
            let name = entry["name"] as! String
            var sources = [entry["peft_folder"] as! String]
            if let g = entry["gguf"] as? String { sources.append(g) }
            for source in sources {
                let m = try model(entry["base"] as! String)
                let adapter = try LoRAAdapter.load(path: path(source), for: m)
                let merged = try m.mergeAdapters(AdapterSet([(adapter, 1)]))
                XCTAssertTrue(m.activeAdapters.isEmpty)
                XCTAssertEqual(Set(merged.mergedTensors), Set(adapter.targets))
                // F32 base: W + ΔW is stored as computed, nothing is rounded.
                XCTAssertEqual(merged.entries.map { $0.type }, [.f32])
                XCTAssertEqual(merged.entries.first?.rmsError, 0)
                let diff = relative(try logits(m), try reference(entry["merged_logits"] as! String))
                report.append("\(name) from \(source) merged: \(diff)")
                XCTAssertLessThanOrEqual(diff, Self.tolerance, "\(name) from \(source)")
            }
        }
        print(report.joined(separator: "\n"))
    }

    func testTwoAdaptersAtOnceEqualTheirSum() throws {
        let pair = try XCTUnwrap((manifest()["pairs"] as? [[String: Any]])?.first)
        let parts = try XCTUnwrap(pair["adapters"] as? [[String: Any]])
        let expected = try reference(pair["peft_logits"] as! String)
        let expectedMerged = try reference(pair["merged_logits"] as! String)
        var report: [String] = []
        for (suffix, merge) in [("", false), (".gguf", false), ("", true)] {
            let m = try model(pair["base"] as! String)
            var set = AdapterSet()
            for p in parts {
                set.entries.append((try LoRAAdapter.load(path: path((p["adapter"] as! String) + suffix), for: m), Float(p["scale"] as! Double)))
            }
            if merge { try m.mergeAdapters(set) } else { m.activeAdapters = set }
            let diff = relative(try logits(m), merge ? expectedMerged : expected)
            report.append("two adapters (\(suffix.isEmpty ? "PEFT" : "GGUF"), \(merge ? "merged" : "unmerged")): \(diff)")
            XCTAssertLessThanOrEqual(diff, Self.tolerance, "\(suffix) merge=\(merge)")
        }
        print(report.joined(separator: "\n"))
    }

    func testGreedyGenerationWithAdaptersMatchesPeftModel() throws {
        // 32 argmax tokens with an f32 cache, one token at a time through the KV cache, against PEFT's
        // argmax loop (the smallest top-2 gap on the way is 0.0017 for gqa-all: still far above
        // Puna's f32 error).
        let prompt = try XCTUnwrap((Fixtures.manifest()["greedy"] as? [String: Any])?["prompt_tokens"] as? [Int]).map { Int32($0) }
        var entries = try adapters().map { ($0, [($0["peft_folder"] as! String, 1.0)]) }
        let pair = try XCTUnwrap((manifest()["pairs"] as? [[String: Any]])?.first)
        entries.append((pair, (pair["adapters"] as! [[String: Any]]).map { ($0["adapter"] as! String, $0["scale"] as! Double) }))
        for (entry, parts) in entries {
            let expected = try XCTUnwrap((entry["greedy"] as? [String: Any])?["tokens"] as? [Int]).map { Int32($0) }
            let m = try model(entry["base"] as! String)
            var set = AdapterSet()
            for (name, scale) in parts { set.entries.append((try LoRAAdapter.load(path: path(name), for: m), Float(scale))) }
            m.activeAdapters = set
            let cache = try m.makeCache(contextLength: prompt.count + expected.count, type: .f32)
            var logits = try m.evaluate(prompt, cache: cache)
            var produced: [Int32] = []
            for _ in 0..<expected.count {
                var best = 0
                for i in 1..<logits.count where logits[i] > logits[best] { best = i }
                produced.append(Int32(best))
                logits = try m.evaluate([Int32(best)], cache: cache)
            }
            XCTAssertEqual(produced, expected, entry["name"] as! String)
        }
    }

    func testAdaptersCanBeSwitchedAndRescaledWithoutReloading() throws {
        let entries = try adapters()
        let all = try XCTUnwrap(entries.first { $0["name"] as? String == "mha-all" })
        let m = try model(all["base"] as! String)
        let base = try logits(m)
        let adapter = try LoRAAdapter.load(path: path("mha-all"), for: m)
        m.activeAdapters = AdapterSet([(adapter, 1)])
        XCTAssertLessThanOrEqual(relative(try logits(m), try reference(all["peft_logits"] as! String)), Self.tolerance)
        m.activeAdapters = .none
        XCTAssertEqual(try logits(m), base, "disabling the adapter restores the base exactly")
        m.activeAdapters = AdapterSet([(adapter, 0)])
        XCTAssertLessThanOrEqual(relative(try logits(m), base), 1e-6, "scale 0 is the base")
        // Scale 2 doubles the update: compare with merging at scale 2 (an independent code path).
        m.activeAdapters = AdapterSet([(adapter, 2)])
        let doubled = try logits(m)
        let merged = try model(all["base"] as! String)
        try merged.mergeAdapters(AdapterSet([(adapter, 2)]))
        XCTAssertLessThanOrEqual(relative(doubled, try logits(merged)), 1e-5)
        XCTAssertGreaterThan(relative(doubled, try reference(all["peft_logits"] as! String)), 0.05)
    }

    func testPerRowAdapterSelection() throws {
        // Batched decoding gives every row its own set; each row must equal a run with that set alone.
        let m = try model("../models/tiny-mha-f32.gguf")
        let a = try LoRAAdapter.load(path: path("mha-all"), for: m)
        let b = try LoRAAdapter.load(path: path("mha-head"), for: m)
        let sets = [AdapterSet([(a, 1)]), AdapterSet.none, AdapterSet([(b, 0.5), (a, 1)]), AdapterSet([(b, 0.5)])]
        for linear in [m.layers[0].q!, m.layers[1].down, m.output] {
            let n = sets.count
            var x = [Float](repeating: 0, count: n * linear.cols)
            for i in 0..<x.count { x[i] = Float(sin(Double(i) * 0.37)) }
            var batched = [Float](repeating: 0, count: n * linear.rows)
            try x.withUnsafeBufferPointer { xp in
                try batched.withUnsafeMutableBufferPointer { try linear.forward(m.pool, xp.baseAddress!, $0.baseAddress!, nTokens: n, adapters: sets) }
            }
            for (t, set) in sets.enumerated() {
                m.activeAdapters = set
                var single = [Float](repeating: 0, count: linear.rows)
                try x.withUnsafeBufferPointer { xp in
                    try single.withUnsafeMutableBufferPointer { try linear.forward(m.pool, xp.baseAddress! + t * linear.cols, $0.baseAddress!, nTokens: 1) }
                }
                let row = Array(batched[(t * linear.rows)..<((t + 1) * linear.rows)])
                XCTAssertLessThanOrEqual(relative(row, single), 1e-6, "\(linear.name) row \(t)")
            }
            m.activeAdapters = .none
        }
        // The embedding's adapter (mha-head has one) also goes per row.
        let tokens: [Int32] = [5, 77, 300, 5]
        let e = m.config.embeddingLength
        var x = [Float](repeating: 0, count: tokens.count * e)
        try x.withUnsafeMutableBufferPointer { try m.addEmbeddingAdapterDeltas(tokens, into: $0.baseAddress!, adapters: sets) }
        for (t, set) in sets.enumerated() {
            m.activeAdapters = set
            var single = [Float](repeating: 0, count: e)
            try single.withUnsafeMutableBufferPointer { try m.addEmbeddingAdapterDeltas([tokens[t]], into: $0.baseAddress!, adapters: nil) }
            XCTAssertEqual(Array(x[(t * e)..<((t + 1) * e)]), single, "embedding row \(t)")
            XCTAssertEqual(single.allSatisfy { $0 == 0 }, set.entries.allSatisfy { $0.adapter !== b }, "row \(t)")
        }
    }

    // MARK: quantized bases

    func testMergedIntoQuantizedBases() throws {
        // Reference kernels: the SIMD ones round activations to 8 bits for quantized weights (as
        // llama.cpp does), which ConformanceTests bounds; here the comparisons are about the merge.
        puna_kernels_set_reference_only(1)
        defer { puna_kernels_set_reference_only(0) }
        let quantized = try XCTUnwrap(manifest()["quantized"] as? [[String: Any]])
        var report: [String] = []
        var types: Set<String> = []
        for q in quantized {
            let type = q["type"] as! String, base = q["base"] as! String
            let ideal = try reference(q["peft_logits"] as! String)
            // Unmerged: the base stays as stored and the update is exact, so this is arithmetic only.
            let unmergedModel = try model(base)
            unmergedModel.activeAdapters = AdapterSet([(try LoRAAdapter.load(path: path(q["adapter"] as! String), for: unmergedModel), 1)])
            let unmerged = relative(try logits(unmergedModel), ideal)
            XCTAssertLessThanOrEqual(unmerged, Self.tolerance, "\(type) unmerged")

            let m = try model(base)
            let merged = try m.mergeAdapters(AdapterSet([(try LoRAAdapter.load(path: path(q["adapter"] as! String), for: m), 1)]))
            let out = try logits(m)
            let vsIdeal = relative(out, ideal)
            var line = "\(q["adapter"]!) on \(type): unmerged \(unmerged); merged vs unmerged reference \(vsIdeal)"
            for e in merged.entries {
                line += "; \(e.type.name): \(e.tensors) tensors, RMS weight \(e.rmsWeight), RMS update \(e.rmsUpdate), RMS requantization error \(e.rmsError)"
                XCTAssertGreaterThan(e.rmsError, 0, "\(type): quantized merge must report its error")
                // Requantizing costs about the base's own quantization error, far less than the weights.
                XCTAssertLessThan(e.rmsError, 0.1 * e.rmsWeight, "\(type) \(e.type.name)")
            }
            if let requantized = q["requantized_logits"] as? String {
                // gguf-py re-encoded the same merged weights: Puna's encoders are bit-exact with it.
                let vsRequantized = relative(out, try reference(requantized))
                line += "; merged vs gguf-py requantized reference \(vsRequantized)"
                XCTAssertLessThanOrEqual(vsRequantized, Self.tolerance, "\(type) merged vs requantized reference")
                let rms = try XCTUnwrap(q["requantization_rms"] as? [String: [String: Any]])
                for e in merged.entries {
                    let want = try XCTUnwrap(rms[e.type.name]?["rms_error"] as? Double, e.type.name)
                    XCTAssertEqual(e.rmsError, want, accuracy: want * 0.01, "\(type): RMS requantization error vs gguf-py")
                }
            }
            // Merged vs exact update: bounded by what requantizing does to the logits, measured here
            // (q8_0 0.028, q4_0 0.32, q4_K 0.29 of max|logit| on these random models; stated in README).
            let bound: Float = ["q8_0": 0.05, "q4_0": 0.5, "q4_k_m": 0.5][type] ?? 0.5
            XCTAssertLessThanOrEqual(vsIdeal, bound, "\(type) merged vs unmerged reference")
            report.append(line)
            types.insert(type)
        }
        XCTAssertEqual(types, ["q8_0", "q4_0", "q4_k_m"])
        print(report.joined(separator: "\n"))
    }

    // MARK: puna merge and the CLI

    func tempFile(_ name: String) -> URL {
        FileManager.default.temporaryDirectory.appendingPathComponent("puna-lora-\(getpid())-\(name)")
    }

    func logitsJSON(_ arguments: [String]) throws -> [Float] {
        let t = try tokens().map { String($0) }.joined(separator: ",")
        let (status, out, err) = try Fixtures.runPuna(["logits"] + arguments + ["--tokens", t, "--json", "-t", "2"])
        XCTAssertEqual(status, 0, err)
        let j = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
        return try XCTUnwrap(j["logits"] as? [[Double]]).flatMap { $0.map { Float($0) } }
    }

    func testPunaMergeWritesAFileThatReloadsToTheMergedLogits() throws {
        let basePath = path("../models/tiny-mha-f32.gguf")
        let out = tempFile("merged.gguf")
        defer { try? FileManager.default.removeItem(at: out) }
        let (status, _, err) = try Fixtures.runPuna(["merge", "-m", basePath, "--lora", path("mha-all"),
                                                     "--lora-scaled", path("mha-head") + ":0.5", "-o", out.path])
        XCTAssertEqual(status, 0, err)
        XCTAssertTrue(err.contains("wrote"), err)
        let pair = try XCTUnwrap((manifest()["pairs"] as? [[String: Any]])?.first)
        let diff = relative(try logitsJSON(["-m", out.path]), try reference(pair["merged_logits"] as! String))
        XCTAssertLessThanOrEqual(diff, Self.tolerance)

        // Metadata, tensor names, order and types are kept (the tied-free base needs no new tensor).
        let base = try GGUFFile(path: basePath), merged = try GGUFFile(path: out.path)
        for key in base.keys where key != "general.alignment" {
            XCTAssertEqual("\(merged[key]!)", "\(base[key]!)", key)
        }
        XCTAssertEqual(merged.alignment, base.alignment)
        XCTAssertEqual(merged.tensors.map { $0.name }, base.tensors.map { $0.name })
        XCTAssertEqual(merged.tensors.map { $0.type }, base.tensors.map { $0.type })
        XCTAssertEqual(merged.tensors.map { $0.shape }, base.tensors.map { $0.shape })
        for t in merged.tensors { XCTAssertEqual(t.offset % merged.alignment, 0, t.name) }
        // Untouched tensors are byte-identical; touched ones changed.
        let touched = Set(try LoRAAdapter.inspect(path: path("mha-all")).targets + LoRAAdapter.inspect(path: path("mha-head")).targets)
        XCTAssertFalse(touched.isEmpty)
        for t in base.tensors {
            let a = Data(base.data(of: t)), b = Data(merged.data(of: merged.tensorInfo(t.name)!))
            XCTAssertEqual(a == b, !touched.contains(t.name), t.name)
        }
        print("puna merge (mha-all + 0.5 × mha-head) reloaded: \(diff)")
    }

    func testPunaMergeConvertsTypes() throws {
        let all = try XCTUnwrap(try adapters().first { $0["name"] as? String == "gqa-all" })
        var report: [String] = []
        for (type, fileType, limit) in [("q8_0", 7, Float(0.05)), ("q4_k", 14, Float(0.5)), ("f16", 1, Float(2e-3))] {
            let out = tempFile("merged-\(type).gguf")
            defer { try? FileManager.default.removeItem(at: out) }
            let (status, _, err) = try Fixtures.runPuna(["merge", "-m", path(all["base"] as! String), "--lora", path("gqa-all.gguf"),
                                                         "-o", out.path, "--type", type, "-t", "2"])
            XCTAssertEqual(status, 0, err)
            let merged = try GGUFFile(path: out.path)
            XCTAssertEqual(merged.int("general.file_type"), fileType, type)
            for t in merged.tensors {
                XCTAssertEqual(t.type, t.shape.count == 1 ? .f32 : GGMLType(name: type)!, "\(type): \(t.name)")
            }
            let diff = relative(try logitsJSON(["-m", out.path]), try reference(all["merged_logits"] as! String))
            report.append("puna merge gqa-all --type \(type): \(diff) (\(err.split(separator: "\n").last ?? ""))")
            XCTAssertLessThanOrEqual(diff, limit, type)
        }
        print(report.joined(separator: "\n"))
    }

    func testCLIFlags() throws {
        let entry = try XCTUnwrap(try adapters().first { $0["name"] as? String == "gqa-alpaca" })
        let base = path(entry["base"] as! String)
        let expected = try reference(entry["peft_logits"] as! String)
        XCTAssertLessThanOrEqual(relative(try logitsJSON(["-m", base, "--lora", path("gqa-alpaca")]), expected), Self.tolerance)
        XCTAssertLessThanOrEqual(relative(try logitsJSON(["-m", base, "--lora-scaled", path("gqa-alpaca.gguf") + ":1.0"]), expected), Self.tolerance)
        XCTAssertLessThanOrEqual(relative(try logitsJSON(["-m", base, "--lora", path("gqa-alpaca"), "--merge-lora"]),
                                          try reference(entry["merged_logits"] as! String)), Self.tolerance)

        // --merge-lora --verbose reports the requantization error per type on stderr.
        let q8 = path("../models/tiny-gqa-q8_0.gguf")
        let (s1, _, e1) = try Fixtures.runPuna(["logits", "-m", q8, "--lora", path("gqa-all"), "--merge-lora", "--verbose", "--tokens", "1,2,3"])
        XCTAssertEqual(s1, 0, e1)
        XCTAssertTrue(e1.contains("merged 14 q8_0 tensors") && e1.contains("RMS requantization error"), e1)

        // puna run with an adapter generates.
        let (s2, o2, e2) = try Fixtures.runPuna(["run", "-m", base, "--lora", path("gqa-alpaca"), "-p", "You may", "-n", "4", "--temp", "0"])
        XCTAssertEqual(s2, 0, e2)
        XCTAssertFalse(o2.isEmpty)

        // puna info --lora: rank, alpha, scale, targets and bytes, with and without a base.
        let (s3, o3, e3) = try Fixtures.runPuna(["info", "--lora", path("gqa-alpaca"), "-m", base, "--json"])
        XCTAssertEqual(s3, 0, e3)
        let info = try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(o3.utf8)) as? [[String: Any]])?.first)
        XCTAssertEqual(info["rank"] as? Int, 16)
        XCTAssertEqual(info["alpha"] as? Double, 16)
        XCTAssertEqual(info["scale"] as? Double, 1)
        XCTAssertEqual(info["target_modules"] as? [String], ["q_proj", "v_proj"])
        XCTAssertEqual((info["targets"] as? [String])?.count, 4)
        XCTAssertEqual(info["checked_against_base"] as? Bool, true)
        let safetensorsBytes = try FileManager.default.attributesOfItem(atPath: path("gqa-alpaca/adapter_model.safetensors"))[.size] as! Int
        let tensorBytes = try XCTUnwrap(info["tensor_bytes"] as? Int)
        XCTAssertTrue(tensorBytes < safetensorsBytes && tensorBytes > safetensorsBytes * 9 / 10, "\(tensorBytes) of \(safetensorsBytes)")
        let (s4, o4, e4) = try Fixtures.runPuna(["info", "--lora", path("mha-rslora")])
        XCTAssertEqual(s4, 0, e4)
        XCTAssertTrue(o4.contains("rsLoRA") && o4.contains("4.000000") && o4.contains("attn_output ×2"), o4)
    }

    // MARK: bad input

    /// A copy of a PEFT folder to damage.
    func copyFolder(_ name: String) throws -> URL {
        let dest = tempFile("adapter-\(name)-\(UUID().uuidString)")
        try FileManager.default.copyItem(at: Self.dir.appendingPathComponent(name), to: dest)
        addTeardownBlock { try? FileManager.default.removeItem(at: dest) }
        return dest
    }

    func editConfig(_ folder: URL, _ change: (inout [String: Any]) -> Void) throws {
        let url = folder.appendingPathComponent("adapter_config.json")
        var config = try Fixtures.json(url)
        change(&config)
        try JSONSerialization.data(withJSONObject: config).write(to: url)
    }

    func loadError(_ adapterPath: String, base: String = "../models/tiny-mha-f32.gguf") throws -> String {
        let m = try model(base, threads: 1)
        do {
            _ = try LoRAAdapter.load(path: adapterPath, for: m)
            XCTFail("\(adapterPath) loaded")
            return ""
        } catch {
            return error.message
        }
    }

    func testAdapterForAnotherBaseNamesTensorAndShapes() throws {
        let message = try loadError(path("gqa-all"))
        // (The first mismatch in the file's tensor order: the down projection, 512 vs 160 inputs.)
        XCTAssertTrue(message.contains("shape mismatch") && message.contains("'base_model.model.model.layers.0.mlp.down_proj.lora_A.weight'")
                      && message.contains("[8, 512]") && message.contains("[8, 160]") && message.contains("'blk.0.ffn_down.weight'"), message)
        let gguf = try loadError(path("gqa-all.gguf"))
        XCTAssertTrue(gguf.contains("shape mismatch") && gguf.contains("'blk.0.ffn_down.weight.lora_a'") && gguf.contains("[512, 8]")
                      && gguf.contains("[160, 8]"), gguf)
        // The CLI says the same and exits non-zero.
        let (status, _, err) = try Fixtures.runPuna(["logits", "-m", path("../models/tiny-mha-f32.gguf"), "--lora", path("gqa-all"), "--tokens", "1"])
        XCTAssertEqual(status, 1)
        XCTAssertTrue(err.contains("shape mismatch"), err)
    }

    func testConfigErrors() throws {
        for key in ["r", "lora_alpha", "target_modules"] {
            let folder = try copyFolder("mha-all")
            try editConfig(folder) { $0.removeValue(forKey: key) }
            let message = try loadError(folder.path)
            XCTAssertTrue(message.contains("missing key '\(key)'") && message.contains("adapter_config.json"), message)
        }
        let noConfig = try copyFolder("mha-all")
        try FileManager.default.removeItem(at: noConfig.appendingPathComponent("adapter_config.json"))
        XCTAssertTrue(try loadError(noConfig.path).contains("no adapter_config.json"))

        let badJSON = try copyFolder("mha-all")
        try Data("{\"r\": 8,".utf8).write(to: badJSON.appendingPathComponent("adapter_config.json"))
        XCTAssertTrue(try loadError(badJSON.path).contains("adapter_config.json"))

        let wrongRank = try copyFolder("mha-all")
        try editConfig(wrongRank) { $0["r"] = 16 }
        let rankMessage = try loadError(wrongRank.path)
        XCTAssertTrue(rankMessage.contains("rank mismatch") && rankMessage.contains("r = 16") && rankMessage.contains("rank 8"), rankMessage)

        let dora = try copyFolder("mha-all")
        try editConfig(dora) { $0["use_dora"] = true }
        XCTAssertTrue(try loadError(dora.path).contains("DoRA"))

        let ia3 = try copyFolder("mha-all")
        try editConfig(ia3) { $0["peft_type"] = "IA3" }
        XCTAssertTrue(try loadError(ia3.path).contains("LoRA adapters only"))

        let saved = try copyFolder("mha-all")
        try editConfig(saved) { $0["modules_to_save"] = ["lm_head"] }
        XCTAssertTrue(try loadError(saved.path).contains("modules_to_save"))
    }

    func testUnknownTargetModulesAreWarnedAndListed() throws {
        let folder = try copyFolder("mha-all")
        try editConfig(folder) { $0["target_modules"] = ["q_proj", "W_pack", "query_key_value"] }
        let m = try model("../models/tiny-mha-f32.gguf", threads: 1)
        let adapter = try LoRAAdapter.load(path: folder.path, for: m)
        XCTAssertTrue(adapter.warnings.contains { $0.contains("W_pack, query_key_value") }, "\(adapter.warnings)")
        let (status, _, err) = try Fixtures.runPuna(["logits", "-m", path("../models/tiny-mha-f32.gguf"), "--lora", folder.path, "--tokens", "1"])
        XCTAssertEqual(status, 0, err)
        XCTAssertTrue(err.contains("warning") && err.contains("W_pack, query_key_value"), err)
    }

    /// Rewrite a safetensors file with a changed header (and the same data).
    func rewriteSafetensors(_ url: URL, _ change: (inout [String: Any]) -> Void) throws {
        let data = try Data(contentsOf: url)
        let n = Int(data.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
        var header = try XCTUnwrap(JSONSerialization.jsonObject(with: data.subdata(in: 8..<(8 + n))) as? [String: Any])
        change(&header)
        let json = try JSONSerialization.data(withJSONObject: header)
        var length = UInt64(json.count).littleEndian
        var out = Data(bytes: &length, count: 8)
        out.append(json)
        out.append(data.subdata(in: (8 + n)..<data.count))
        try out.write(to: url)
    }

    func testRankMismatchBetweenAAndB() throws {
        let folder = try copyFolder("mha-all")
        let file = folder.appendingPathComponent("adapter_model.safetensors")
        // Give one lora_B a rank of 4 (its byte range shrinks to match, so the file stays consistent).
        try rewriteSafetensors(file) { header in
            let key = "base_model.model.model.layers.1.mlp.up_proj.lora_B.weight"
            var entry = header[key] as! [String: Any]
            let offsets = entry["data_offsets"] as! [Int]
            entry["shape"] = [160, 4]
            entry["data_offsets"] = [offsets[0], offsets[0] + 160 * 4 * 4]
            header[key] = entry
        }
        let message = try loadError(folder.path)
        XCTAssertTrue(message.contains("rank mismatch") && message.contains("up_proj.lora_A.weight") && message.contains("[8, 64]")
                      && message.contains("up_proj.lora_B.weight") && message.contains("[160, 4]"), message)
    }

    func testHostileSafetensors() throws {
        let good = try Data(contentsOf: Self.dir.appendingPathComponent("mha-all/adapter_model.safetensors"))
        let headerLength = Int(good.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
        func check(_ bytes: Data, _ expected: String, file: StaticString = #filePath, line: UInt = #line) throws {
            let url = tempFile("hostile-\(UUID().uuidString).safetensors")
            defer { try? FileManager.default.removeItem(at: url) }
            try bytes.write(to: url)
            do {
                _ = try SafetensorsFile(path: url.path)
                XCTFail("accepted: \(expected)", file: file, line: line)
            } catch {
                XCTAssertTrue(error.message.contains(url.path) && error.message.contains(expected), error.message, file: file, line: line)
            }
        }
        try check(Data(), "truncated")
        try check(good.prefix(5), "truncated")
        try check(good.prefix(8 + headerLength / 2), "beyond the end of the file")
        var huge = good
        huge.replaceSubrange(0..<8, with: withUnsafeBytes(of: UInt64(1 << 40).littleEndian) { Data($0) })
        try check(huge, "beyond the end of the file")
        try check(good.prefix(8 + headerLength + 100), "past the end of the file")
        var notJSON = good
        notJSON.replaceSubrange(8..<12, with: Data("xxxx".utf8))
        try check(notJSON, "not valid JSON")
        func withHeader(_ json: String) -> Data {
            var length = UInt64(json.utf8.count).littleEndian
            var d = Data(bytes: &length, count: 8)
            d.append(Data(json.utf8))
            d.append(Data(count: 64))
            return d
        }
        try check(withHeader("[1,2]"), "not a JSON object")
        try check(withHeader(#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,8]}}"#), "needs 16 bytes")
        try check(withHeader(#"{"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}}"#), "unknown dtype")
        try check(withHeader(#"{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#), "non-negative")
        try check(withHeader(#"{"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}}"#), "overflows")
        try check(withHeader(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#), "data_offsets")
        try check(withHeader(#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}"#), "overlaps")
        // The whole path, through the adapter loader: the message names the file.
        let folder = try copyFolder("mha-all")
        try good.prefix(8 + headerLength / 2).write(to: folder.appendingPathComponent("adapter_model.safetensors"))
        XCTAssertTrue(try loadError(folder.path).contains("beyond the end of the file"))
    }

    func testPickleAndNonAdaptersAreRefusedWithAHint() throws {
        let folder = try copyFolder("mha-all")
        try FileManager.default.removeItem(at: folder.appendingPathComponent("adapter_model.safetensors"))
        try Data([0x80, 0x02, 0x7D]).write(to: folder.appendingPathComponent("adapter_model.bin"))
        let message = try loadError(folder.path)
        XCTAssertTrue(message.contains("pickle") && message.contains("save_file"), message)
        XCTAssertTrue(try loadError(folder.appendingPathComponent("adapter_model.bin").path).contains("pickle"))
        // A model is not an adapter.
        XCTAssertTrue(try loadError(path("../models/tiny-mha-q8_0.gguf")).contains("not 'adapter'"))
        XCTAssertTrue(try loadError(path("manifest.json")).contains("not a LoRA adapter"))
        XCTAssertTrue(try loadError(path("no-such-adapter")).contains("no such file"))
        // --merge-lora without adapters, a bad scale.
        let base = path("../models/tiny-mha-f32.gguf")
        let (s1, _, e1) = try Fixtures.runPuna(["logits", "-m", base, "--merge-lora", "--tokens", "1"])
        XCTAssertEqual(s1, 1)
        XCTAssertTrue(e1.contains("--merge-lora needs"), e1)
        let (s2, _, e2) = try Fixtures.runPuna(["logits", "-m", base, "--lora-scaled", path("mha-all") + ":x", "--tokens", "1"])
        XCTAssertEqual(s2, 1)
        XCTAssertTrue(e2.contains("--lora-scaled") && e2.contains("not a number"), e2)
        let (s3, _, e3) = try Fixtures.runPuna(["merge", "-m", base, "--lora", path("mha-all"), "-o", base])
        XCTAssertEqual(s3, 1)
        XCTAssertTrue(e3.contains("overwrite"), e3)
    }

    /// `puna bench --lora` measures with the adapter applied; --lora-ab measures both in one process.
    func testBenchTakesAdaptersAndComparesInOneProcess() throws {
        let base = path("../models/tiny-gqa-q8_0.gguf")
        let (s1, o1, e1) = try Fixtures.runPuna(["bench", "-m", base, "--lora", path("gqa-all"), "-p", "0", "-n", "4", "-r", "2", "-t", "2",
                                                  "--lora-ab", "--json"])
        XCTAssertEqual(s1, 0, e1)
        let j = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(o1.utf8)) as? [String: Any])
        XCTAssertEqual(j["adapters"] as? [String], [path("gqa-all")])
        XCTAssertEqual(((j["decode"] as? [String: Any])?["samples_ns"] as? [Any])?.count, 2)
        XCTAssertEqual(((j["decode_with_adapters"] as? [String: Any])?["samples_ns"] as? [Any])?.count, 2)
        XCTAssertEqual((j["decode_ratios"] as? [Double])?.count, 2)
        XCTAssertGreaterThan(j["decode_ratio_median"] as? Double ?? 0, 0)
        let (s2, _, e2) = try Fixtures.runPuna(["bench", "-m", base, "-p", "0", "-n", "2", "-r", "1", "--lora-ab"])
        XCTAssertNotEqual(s2, 0)
        XCTAssertTrue(e2.contains("--lora-ab needs --lora"), e2)
    }

    // MARK: the LoRA kernels (puna_lora.h)

    /// Random factors of one type with a plain Double reference of what they hold.
    struct RandomFactor {
        let type: GGMLType
        let bytes: [UInt8]
        let values: [Double]

        init(type: GGMLType, count: Int, rng: inout SystemRandomNumberGenerator) {
            self.type = type
            var bytes: [UInt8] = [], values: [Double] = []
            for _ in 0..<count {
                let f = Float.random(in: -1...1, using: &rng)
                switch type {
                case .f16:
                    // A random normal half: sign, exponent 2^-6 … 2^0, mantissa.
                    let bits = UInt16.random(in: 0...1, using: &rng) << 15 | UInt16.random(in: 9...15, using: &rng) << 10
                        | UInt16.random(in: 0..<1024, using: &rng)
                    bytes += [UInt8(bits & 0xff), UInt8(bits >> 8)]
                    values.append(Double(puna_f16_to_f32(bits)))
                case .bf16:
                    let bits = UInt16(truncatingIfNeeded: f.bitPattern >> 16)
                    bytes += [UInt8(bits & 0xff), UInt8(bits >> 8)]
                    values.append(Double(Float(bitPattern: UInt32(bits) << 16)))
                default:
                    withUnsafeBytes(of: f.bitPattern.littleEndian) { bytes += $0 }
                    values.append(Double(f))
                }
            }
            self.bytes = bytes
            self.values = values
        }
    }

    /// One pair with its tiled Bᵀ, kept alive for the kernel.
    final class KernelPair {
        let a: RandomFactor, b: RandomFactor
        let rank: Int, cols: Int, outputs: Int
        let order: [Int]?
        let bt: UnsafeMutableRawPointer
        /// A's bytes at a fixed address (`factors.a`).
        let aCopy: UnsafeMutableRawPointer
        var factors: puna_lora_factors

        init(aType: GGMLType, bType: GGMLType, rank: Int, cols: Int, outputs: Int, permuted: Bool, rng: inout SystemRandomNumberGenerator) {
            a = RandomFactor(type: aType, count: rank * cols, rng: &rng)
            b = RandomFactor(type: bType, count: outputs * rank, rng: &rng)
            self.rank = rank
            self.cols = cols
            self.outputs = outputs
            let order: [Int]? = permuted ? Array((0..<outputs).reversed()) : nil
            self.order = order
            let bytes = Int(puna_lora_bt_bytes(Int32(bType.rawValue), Int64(outputs), Int64(rank)))
            let bt = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
            self.bt = bt
            let status = b.bytes.withUnsafeBytes { src -> Int32 in
                if let order {
                    let o = order.map { Int64($0) }
                    return o.withUnsafeBufferPointer { puna_lora_pack_bt(Int32(bType.rawValue), src.baseAddress, Int64(outputs), Int64(rank), $0.baseAddress, bt) }
                }
                return puna_lora_pack_bt(Int32(bType.rawValue), src.baseAddress, Int64(outputs), Int64(rank), nil, bt)
            }
            precondition(status == 0)
            let aCopy = UnsafeMutableRawPointer.allocate(byteCount: max(a.bytes.count, 1), alignment: 64)
            a.bytes.withUnsafeBytes { aCopy.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            self.aCopy = aCopy
            factors = puna_lora_factors(a_type: Int32(aType.rawValue), bt_type: Int32(bType.rawValue), a: UnsafeRawPointer(aCopy),
                                        bt: UnsafeRawPointer(bt), rank: Int64(rank), cols: Int64(cols), outputs: Int64(outputs))
        }

        deinit {
            bt.deallocate()
            aCopy.deallocate()
        }

        /// Runs puna_lora_apply on this pair.
        func apply(_ pool: OpaquePointer, x: [Float], y: inout [Float], yStride: Int, n: Int, rows: [Int32]?, scales: [Float]?, scale: Float) -> Int32 {
            var f = factors
            return y.withUnsafeMutableBufferPointer { yp in
                x.withUnsafeBufferPointer { xp in
                    puna_lora_apply(pool, &f, xp.baseAddress, yp.baseAddress, Int64(yStride), Int64(n), rows, scales, scale)
                }
            }
        }

        /// Σ_k s·B[i][k]·(A[k]·x) for base output o (B row i with order[i] == o), in Double.
        func reference(x: ArraySlice<Double>, scale: Double) -> [Double] {
            var u = [Double](repeating: 0, count: rank)
            for k in 0..<rank {
                var s = 0.0
                for c in 0..<cols { s += a.values[k * cols + c] * x[x.startIndex + c] }
                u[k] = scale * s
            }
            var out = [Double](repeating: 0, count: outputs)
            for i in 0..<outputs {
                var s = 0.0
                for k in 0..<rank { s += b.values[i * rank + k] * u[k] }
                out[order?[i] ?? i] = s
            }
            return out
        }
    }

    /// puna_lora_apply against a Double reference on random F16/F32/BF16 factors of odd sizes, on
    /// the SIMD and portable paths, and bit-identical for 1, 2 and 3 threads and whatever tokens
    /// share the call (batched decode must equal one-at-a-time decode).
    func testLoRAKernelMatchesDoubleReferenceAndIsIndependentOfThreadsAndBatch() throws {
        var rng = SystemRandomNumberGenerator()
        let pools = [1, 2, 3].map { puna_pool_create(Int32($0))! }
        defer { pools.forEach { puna_pool_destroy($0) }; _ = puna_lora_set_path(Int32(PUNA_LORA_AUTO.rawValue)) }
        let shapes: [(rank: Int, cols: Int, outputs: Int)] = [(5, 37, 77), (16, 130, 64), (3, 8, 200), (64, 96, 129)]
        let types: [(GGMLType, GGMLType)] = [(.f16, .f16), (.f32, .f32), (.bf16, .bf16), (.f16, .f32), (.bf16, .f16)]
        for path in [PUNA_LORA_AUTO, PUNA_LORA_PORTABLE] {
            XCTAssertEqual(puna_lora_set_path(Int32(path.rawValue)), 0)
            let pathName = String(cString: puna_lora_path_name())
            for (shapeIndex, shape) in shapes.enumerated() {
                for (aType, bType) in types {
                    let pair = KernelPair(aType: aType, bType: bType, rank: shape.rank, cols: shape.cols, outputs: shape.outputs,
                                          permuted: shapeIndex % 2 == 1, rng: &rng)
                    let label = "\(pathName) \(aType.name)/\(bType.name) r\(shape.rank) \(shape.cols)→\(shape.outputs)"
                    let n = 7, stride = shape.outputs + 3  // y rows wider than the outputs: the stride is honoured
                    let x = (0..<(n * shape.cols)).map { _ in Float.random(in: -2...2, using: &rng) }
                    let y0 = (0..<(n * stride)).map { _ in Float.random(in: -1...1, using: &rng) }
                    let scales = (0..<n).map { _ in Float.random(in: 0.25...2, using: &rng) }

                    // All tokens at once on one thread, checked against Double.
                    var batched = y0
                    XCTAssertEqual(pair.apply(pools[0], x: x, y: &batched, yStride: stride, n: n, rows: nil, scales: scales, scale: 0), 0)
                    var worst = 0.0, size = 0.0
                    for t in 0..<n {
                        let want = pair.reference(x: x[(t * shape.cols)..<((t + 1) * shape.cols)].map { Double($0) }[...], scale: Double(scales[t]))
                        for o in 0..<shape.outputs {
                            worst = max(worst, abs(Double(batched[t * stride + o] - y0[t * stride + o]) - want[o]))
                            size = max(size, abs(want[o]))
                        }
                        for o in shape.outputs..<stride { XCTAssertEqual(batched[t * stride + o], y0[t * stride + o], "\(label): padding touched") }
                    }
                    XCTAssertLessThan(worst / size, 1e-5, label)

                    // Other thread counts, one token at a time, and a subset of rows in another order: same bits.
                    for pool in pools.dropFirst() {
                        var again = y0
                        XCTAssertEqual(pair.apply(pool, x: x, y: &again, yStride: stride, n: n, rows: nil, scales: scales, scale: 0), 0)
                        XCTAssertEqual(again, batched, "\(label): threads \(puna_pool_size(pool))")
                    }
                    for pool in pools {
                        var single = y0
                        for t in 0..<n {
                            XCTAssertEqual(pair.apply(pool, x: x, y: &single, yStride: stride, n: 1, rows: [Int32(t)], scales: nil, scale: scales[t]), 0)
                        }
                        XCTAssertEqual(single, batched, "\(label): one token at a time, threads \(puna_pool_size(pool))")
                        var subset = y0
                        let rows: [Int32] = [5, 1, 6]
                        XCTAssertEqual(pair.apply(pool, x: x, y: &subset, yStride: stride, n: rows.count, rows: rows, scales: rows.map { scales[Int($0)] }, scale: 0), 0)
                        for t in 0..<n {
                            let row = Array((rows.contains(Int32(t)) ? batched : y0)[(t * stride)..<((t + 1) * stride)])
                            XCTAssertEqual(Array(subset[(t * stride)..<((t + 1) * stride)]), row, "\(label): row subset, token \(t)")
                        }
                    }
                }
            }
        }
        // Types the kernel does not take are refused.
        XCTAssertEqual(puna_lora_supports(Int32(GGMLType.q8_0.rawValue)), 0)
        XCTAssertEqual(puna_lora_bt_bytes(Int32(GGMLType.q4_0.rawValue), 64, 8), 0)
    }

    /// puna_lora_matmul_many1 (one pool run for several matrices sharing x, each with its own pairs)
    /// gives the bits of puna_matmul followed by puna_lora_apply per pair, for float and quantized
    /// base types, row counts off the tile sizes, a matrix without pairs among them, and 1–3 threads;
    /// and refuses a pair whose shape does not fit its matrix.
    func testFusedOneTokenProductEqualsMatmulThenDeltas() throws {
        var rng = SystemRandomNumberGenerator()
        let cols = 256
        let groups: [[(type: GGMLType, rows: Int, ranks: [Int])]] = [
            [(.f32, 200, [8, 3])], [(.f16, 130, [5])], [(.q8_0, 200, [8, 3])], [(.q4_0, 200, [8, 3])], [(.q4_K, 200, [8, 3])],
            [(.q4_0, 200, [8]), (.q4_K, 72, []), (.q6_K, 130, [3, 16])],   // Q, K, V-like: one matrix has no pairs
            [(.q8_0, 70, [4]), (.f16, 64, [2])],
        ]
        for group in groups {
            let x = (0..<cols).map { _ in Float.random(in: -1...1, using: &rng) }
            let weights = try group.map { m in try m.type.encode((0..<(m.rows * cols)).map { _ in Float.random(in: -1...1, using: &rng) }) }
            let pairs: [[KernelPair]] = group.map { m in
                m.ranks.enumerated().map { i, r in
                    KernelPair(aType: i % 2 == 0 ? .f16 : .f32, bType: i % 2 == 0 ? .f16 : .bf16, rank: r, cols: cols,
                               outputs: m.rows, permuted: i == 0, rng: &rng)
                }
            }
            let scales: [[Float]] = pairs.map { p in p.indices.map { 0.5 + Float($0) * 1.25 } }
            let label = group.map { "\($0.type.name)x\($0.rows)" }.joined(separator: "+")
            let weightCopies = weights.map { w -> UnsafeMutableRawPointer in
                let p = UnsafeMutableRawPointer.allocate(byteCount: max(w.count, 1), alignment: 64)
                w.withUnsafeBytes { p.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
                return p
            }
            let factorLists = pairs.map { list -> UnsafeMutablePointer<puna_lora_factors> in
                let f = UnsafeMutablePointer<puna_lora_factors>.allocate(capacity: max(list.count, 1))
                for (i, p) in list.enumerated() { (f + i).initialize(to: p.factors) }
                return f
            }
            let scaleLists = scales.map { list -> UnsafeMutablePointer<Float> in
                let s = UnsafeMutablePointer<Float>.allocate(capacity: max(list.count, 1))
                for (i, v) in list.enumerated() { s[i] = v }
                return s
            }
            defer {
                weightCopies.forEach { $0.deallocate() }
                factorLists.forEach { $0.deallocate() }
                scaleLists.forEach { $0.deallocate() }
            }
            let types = group.map { Int32($0.type.rawValue) }
            let rows = group.map { Int64($0.rows) }
            let wp: [UnsafeRawPointer?] = weightCopies.map { UnsafeRawPointer($0) }
            let fp: [UnsafePointer<puna_lora_factors>?] = factorLists.map { UnsafePointer($0) }
            let sp: [UnsafePointer<Float>?] = scaleLists.map { UnsafePointer($0) }
            let counts = pairs.map { Int32($0.count) }
            for threads in [1, 2, 3] {
                let pool = puna_pool_create(Int32(threads))!
                defer { puna_pool_destroy(pool) }
                var expected: [[Float]] = []
                for (m, g) in group.enumerated() {
                    var y = [Float](repeating: 0, count: g.rows)
                    XCTAssertEqual(puna_matmul(pool, types[m], wp[m], rows[m], Int64(cols), x, 1, &y), 0)
                    for (p, s) in zip(pairs[m], scales[m]) { XCTAssertEqual(p.apply(pool, x: x, y: &y, yStride: g.rows, n: 1, rows: nil, scales: nil, scale: s), 0) }
                    expected.append(y)
                }
                let outputs = group.map { UnsafeMutablePointer<Float>.allocate(capacity: $0.rows) }
                defer { outputs.forEach { $0.deallocate() } }
                for (o, g) in zip(outputs, group) { o.initialize(repeating: .nan, count: g.rows) }
                let ys: [UnsafeMutablePointer<Float>?] = outputs
                XCTAssertEqual(puna_lora_matmul_many1(pool, Int32(group.count), types, wp, rows, Int64(cols), x, ys, fp, sp, counts), 0, label)
                for (m, g) in group.enumerated() {
                    XCTAssertEqual(Array(UnsafeBufferPointer(start: outputs[m], count: g.rows)), expected[m], "\(label): matrix \(m), \(threads) threads")
                }
                // A pair whose outputs do not match its matrix is refused, with nothing computed.
                if let m = group.firstIndex(where: { !$0.ranks.isEmpty }) {
                    factorLists[m].pointee.outputs += 1
                    XCTAssertEqual(puna_lora_matmul_many1(pool, Int32(group.count), types, wp, rows, Int64(cols), x, ys, fp, sp, counts), -1, label)
                    factorLists[m].pointee.outputs -= 1
                }
            }
        }
    }
}
