import Foundation
import PunaCore
import XCTest

/// `puna batch` and the batched forward pass under it: batched logits equal single-sequence ones
/// bit for bit, records do not depend on --parallel / threads / chunking, a SIGKILLed run resumes
/// to every id exactly once, bad lines become error records, shards partition the input.
final class BatchTests: XCTestCase {
    func model(_ name: String) -> String { Fixtures.models.appendingPathComponent(name).path }

    var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("puna-batch-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: dir)
    }

    func write(_ name: String, _ lines: [String]) throws -> String {
        let url = dir.appendingPathComponent(name)
        try (lines.joined(separator: "\n") + "\n").write(to: url, atomically: true, encoding: .utf8)
        return url.path
    }

    func json(_ object: [String: Any]) -> String {
        String(decoding: try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), as: UTF8.self)
    }

    /// Output records in file order; fails on a line that is not a JSON object.
    func records(_ path: String) throws -> [[String: Any]] {
        let text = try String(contentsOfFile: path, encoding: .utf8)
        XCTAssertTrue(text.isEmpty || text.hasSuffix("\n"), "output must end with a complete line")
        return try text.split(separator: "\n").map { line in
            try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], String(line))
        }
    }

    /// Records of the complete lines of a file that may not exist yet (a kill can come before it
    /// is created; a cut-short last line, which a kill inside write(2) could leave, is not counted).
    func completeRecords(_ path: String) throws -> [[String: Any]] {
        guard let data = FileManager.default.contents(atPath: path) else { return [] }
        let text = String(decoding: data, as: UTF8.self)
        guard let end = text.lastIndex(of: "\n") else { return [] }
        return try text[...end].split(separator: "\n").map { line in
            try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], String(line))
        }
    }

    /// Records keyed by id ("s:abc" / "n:7"), each id required to appear once.
    func byID(_ list: [[String: Any]], file: StaticString = #filePath, line: UInt = #line) -> [String: [String: Any]] {
        var out: [String: [String: Any]] = [:]
        for r in list {
            // A line without an id is known by its line number: "id": null, "line": N.
            let key = r["id"] is String ? "s:\(r["id"]!)" : r["id"] is NSNull ? "l:\(r["line"] ?? "?")" : "n:\(r["id"]!)"
            XCTAssertNil(out[key], "id \(key) appears twice", file: file, line: line)
            out[key] = r
        }
        return out
    }

    /// The fields that must not depend on scheduling (ms does).
    func essence(_ r: [String: Any]) -> String {
        "\(r["text"] ?? "-")|\(r["finish_reason"] ?? "-")|\(r["tokens_in"] ?? "-")|\(r["tokens_out"] ?? "-")|\(r["adapter"] ?? "-")|\(r["error"] ?? "-")"
    }

    /// A mix of templates, seeds, temperatures, stops and lengths.
    func mixedInput(count: Int, maxTokens: Int = 24, adapters: [String] = []) -> [String] {
        let templates = ["raw", "alpaca", "guanaco", "vicuna"]
        var lines: [String] = []
        for i in 0..<count {
            var r: [String: Any] = ["id": i % 3 == 0 ? i : "rec-\(i)" as Any, "max_tokens": maxTokens - i % 7]
            if i % 5 == 4 {
                r["instruction"] = "Summarise item \(i)"
                r["input"] = i % 2 == 0 ? "some context \(i)" : ""
            } else {
                r["prompt"] = String(repeating: "word\(i) ", count: 1 + i % 6) + "and then"
                r["template"] = templates[i % templates.count]
            }
            if i % 4 != 1 { r["seed"] = 1000 + i }
            r["temperature"] = i % 3 == 2 ? 0 : 0.7 + Double(i % 4) * 0.1
            if i % 6 == 3 { r["top_k"] = 0; r["top_p"] = 0.9; r["min_p"] = 0 }
            if i % 7 == 5 { r["repeat_penalty"] = 1.3 }
            if i % 8 == 6 { r["stop"] = ["e", "a"] }
            if i % 9 == 8 { r["system"] = "You are terse." }
            if !adapters.isEmpty && i % (adapters.count + 1) != 0 { r["adapter"] = adapters[i % (adapters.count + 1) - 1] }
            lines.append(json(r))
        }
        return lines
    }

    // MARK: batched forward

    /// Several sequences in one step, prefill chunks and decode rows mixed, give exactly the logits
    /// each sequence gets alone, for every weight type of the fixtures, with another thread count.
    /// This is the property that makes records independent of --parallel: a matmul row's result
    /// must not depend on the other rows of the batch (a kernel that breaks it fails here).
    func testBatchedLogitsEqualSingleSequenceBitForBit() throws {
        let files = ["tiny-gqa-f32", "tiny-gqa-f16", "tiny-gqa-q8_0", "tiny-gqa-q4_0", "tiny-gqa-q4_k_m", "tiny-gqa-q5_k_m",
                     "tiny-mha-q4_1", "tiny-mha-q5_0", "tiny-mha-q5_1", "tiny-tied-q8_0"]
        let sequences: [[Int32]] = [
            [1, 450, 496, 173, 170, 432, 172, 97],
            [1, 90, 250, 263, 31, 298, 27, 471, 263, 217, 299, 13],
            [1, 150],
        ]
        // Tokens each sequence contributes per step (0 = sits the step out).
        let schedule: [[Int]] = [[3, 5, 1], [1, 0, 1], [2, 4, 0], [1, 2, 0], [1, 1, 0]]
        for cacheType in [GGMLType.f32, .f16] {
            for file in files {
                let single = try LanguageModel(path: model(file + ".gguf"), options: ModelOptions(threads: 1))
                let batched = try LanguageModel(path: model(file + ".gguf"), options: ModelOptions(threads: 2, batchSize: 3))
                let vocab = single.config.vocabSize
                var reference: [[Float]] = []
                for s in sequences {
                    reference.append(try single.evaluate(s, cache: single.makeCache(contextLength: 32, type: cacheType), allLogits: true))
                }
                let caches = try sequences.map { _ in try batched.makeCache(contextLength: 32, type: cacheType) }
                var done = [0, 0, 0]
                for step in schedule {
                    var slices: [BatchSlice] = []
                    var owners: [Int] = []
                    for (i, n) in step.enumerated() where n > 0 {
                        slices.append(BatchSlice(cache: caches[i], tokens: Array(sequences[i][done[i]..<(done[i] + n)]),
                                                 wantsLogits: i != 1 || done[i] + n == sequences[i].count))
                        owners.append(i)
                    }
                    let logits = try batched.evaluateBatch(slices)
                    var row = 0
                    for (slice, i) in zip(slices, owners) {
                        done[i] += slice.tokens.count
                        guard slice.wantsLogits else { continue }
                        let got = Array(logits[(row * vocab)..<((row + 1) * vocab)])
                        let want = Array(reference[i][((done[i] - 1) * vocab)..<(done[i] * vocab)])
                        if got != want {
                            let worst = zip(got, want).map { abs($0 - $1) }.max() ?? 0
                            XCTFail("\(file) \(cacheType.name): sequence \(i) at position \(done[i] - 1): batched logits differ (max |diff| \(worst))")
                        }
                        row += 1
                    }
                }
                XCTAssertEqual(done, sequences.map { $0.count })
                XCTAssertEqual(caches.map { $0.count }, done)
            }
        }
    }

    /// Sequences with different LoRA adapters in one step (base product batched, each delta on its
    /// own rows) get exactly the logits of running alone with that adapter active.
    func testBatchedLogitsWithPerSequenceAdaptersEqualSingleSequence() throws {
        let lora = Fixtures.root.appendingPathComponent("lora")
        let sequences: [[Int32]] = [[1, 339, 440, 432, 310], [1, 306, 432, 407, 366, 307, 430], [1, 432, 267], [1, 341, 416]]
        for file in ["tiny-gqa-f32", "tiny-gqa-q4_0", "tiny-gqa-q8_0"] {
            let single = try LanguageModel(path: model(file + ".gguf"), options: ModelOptions(threads: 1))
            let batched = try LanguageModel(path: model(file + ".gguf"), options: ModelOptions(threads: 2))
            func sets(_ m: LanguageModel) throws -> [AdapterSet] {
                let all = try LoRAAdapter.load(path: lora.appendingPathComponent("gqa-all").path, for: m)
                let alpaca = try LoRAAdapter.load(path: lora.appendingPathComponent("gqa-alpaca.gguf").path, for: m)
                return [.none, AdapterSet([(all, 1)]), AdapterSet([(alpaca, 1)]), AdapterSet([(all, 0.5)])]
            }
            let singleSets = try sets(single), batchedSets = try sets(batched)
            let vocab = single.config.vocabSize
            var reference: [[Float]] = []
            for (i, s) in sequences.enumerated() {
                single.activeAdapters = singleSets[i]
                reference.append(try single.evaluate(s, cache: single.makeCache(contextLength: 16, type: .f32), allLogits: true))
            }
            let caches = try sequences.map { _ in try batched.makeCache(contextLength: 16, type: .f32) }
            // Step 1: all prompts but their last token; step 2: the last tokens, as decode rows.
            let first = try batched.evaluateBatch(sequences.indices.map {
                BatchSlice(cache: caches[$0], tokens: Array(sequences[$0].dropLast()), wantsLogits: true, adapters: batchedSets[$0])
            })
            let second = try batched.evaluateBatch(sequences.indices.map {
                BatchSlice(cache: caches[$0], tokens: [sequences[$0].last!], wantsLogits: true, adapters: batchedSets[$0])
            })
            for i in sequences.indices {
                let n = sequences[i].count
                XCTAssertTrue(Array(first[(i * vocab)..<((i + 1) * vocab)]) == Array(reference[i][((n - 2) * vocab)..<((n - 1) * vocab)]),
                              "\(file): sequence \(i), prompt step")
                XCTAssertTrue(Array(second[(i * vocab)..<((i + 1) * vocab)]) == Array(reference[i][((n - 1) * vocab)..<(n * vocab)]),
                              "\(file): sequence \(i), decode step")
            }
            // The adapters do change the logits (or the comparison above would prove nothing).
            XCTAssertNotEqual(Array(reference[0][0..<vocab]), Array(reference[1][0..<vocab]))
        }
    }

    func testBatchRefusesBadSlices() throws {
        let m = try LanguageModel(path: model("tiny-mha-q8_0.gguf"), options: ModelOptions(threads: 1))
        let cache = try m.makeCache(contextLength: 4)
        XCTAssertThrowsError(try m.evaluateBatch([])) { XCTAssertTrue("\($0)".contains("no sequences"), "\($0)") }
        XCTAssertThrowsError(try m.evaluateBatch([BatchSlice(cache: cache, tokens: [1, 2, 3, 4, 5], wantsLogits: true)])) {
            XCTAssertTrue("\($0)".contains("context full"), "\($0)")
        }
        XCTAssertThrowsError(try m.evaluateBatch([BatchSlice(cache: cache, tokens: [1], wantsLogits: true),
                                                  BatchSlice(cache: cache, tokens: [2], wantsLogits: true)])) {
            XCTAssertTrue("\($0)".contains("share one KV cache"), "\($0)")
        }
        XCTAssertThrowsError(try m.evaluateBatch([BatchSlice(cache: cache, tokens: [Int32(m.config.vocabSize)], wantsLogits: true)])) {
            XCTAssertTrue("\($0)".contains("out of range"), "\($0)")
        }
        XCTAssertEqual(cache.count, 0, "a refused step must leave the cache alone")
    }

    // MARK: the command

    /// A record's text depends only on the record: --parallel 1 on one thread and --parallel 8 on
    /// two threads with small prompt chunks (-b 5) give the same records, with mixed seeds,
    /// templates and adapters; records equal `puna run` with the same settings and adapter.
    func testParallelOneAndEightGiveIdenticalRecords() throws {
        let input = try write("in.jsonl", mixedInput(count: 20, adapters: ["all", "alpaca"]))
        let out1 = dir.appendingPathComponent("p1.jsonl").path, out8 = dir.appendingPathComponent("p8.jsonl").path
        let m = model("tiny-gqa-q4_0.gguf")
        let lora = Fixtures.root.appendingPathComponent("lora")
        let adapters = ["--lora", "all=" + lora.appendingPathComponent("gqa-all").path,
                        "--lora", "alpaca=" + lora.appendingPathComponent("gqa-alpaca.gguf").path]
        var (status, _, err) = try Fixtures.runPuna(["batch", "-m", m, "-i", input, "-o", out1, "--parallel", "1", "-t", "1"] + adapters)
        XCTAssertEqual(status, 0, err)
        (status, _, err) = try Fixtures.runPuna(["batch", "-m", m, "-i", input, "-o", out8, "--parallel", "8", "-t", "2", "-b", "5"] + adapters)
        XCTAssertEqual(status, 0, err)
        XCTAssertTrue(err.contains("20 records, 0 errors"), err)
        let a = byID(try records(out1)), b = byID(try records(out8))
        XCTAssertEqual(a.count, 20)
        XCTAssertEqual(Set(a.keys), Set(b.keys))
        var reasons: Set<String> = []
        for (id, r) in a {
            XCTAssertEqual(essence(r), essence(b[id]!), id)
            XCTAssertNil(r["error"], id)
            reasons.insert(r["finish_reason"] as! String)
        }
        XCTAssertTrue(reasons.isSuperset(of: ["length", "stop"]), "the mix should end records in different ways: \(reasons)")
        XCTAssertEqual(Set(a.values.map { "\($0["adapter"]!)" }), ["<null>", "all", "alpaca"])

        // Record 2 (guanaco, temperature 0, adapter "alpaca") and record 10 (guanaco, seed 1010, temperature
        // 0.9, adapter "all"): `puna run` with the same settings prints the same text.
        let r2 = try XCTUnwrap(a["s:rec-2"]), r10 = try XCTUnwrap(a["s:rec-10"])
        XCTAssertEqual(r2["adapter"] as? String, "alpaca")
        XCTAssertEqual(r10["adapter"] as? String, "all")
        var run = try Fixtures.runPuna(["run", "-m", m, "-p", String(repeating: "word2 ", count: 3) + "and then",
                                        "--template", "guanaco", "--temp", "0", "-n", "\(24 - 2)", "-s", "1002",
                                        "--lora", lora.appendingPathComponent("gqa-alpaca.gguf").path])
        XCTAssertEqual(run.0, 0, run.2)
        XCTAssertEqual(run.1, (r2["text"] as! String) + "\n")
        run = try Fixtures.runPuna(["run", "-m", m, "-p", String(repeating: "word10 ", count: 5) + "and then",
                                    "--template", "guanaco", "--temp", "0.9", "-n", "\(24 - 3)", "-s", "1010",
                                    "--lora", lora.appendingPathComponent("gqa-all").path])
        XCTAssertEqual(run.0, 0, run.2)
        XCTAssertEqual(run.1, (r10["text"] as! String) + "\n")
    }

    /// kill -9 at random moments, rerun each time: at the end every id is in the output exactly once
    /// and every text equals that of an uninterrupted run.
    func testSIGKILLAtRandomPointsThenResumeGivesEveryIDExactlyOnce() throws {
        let count = 40
        var lines: [String] = []
        for i in 0..<count {
            lines.append(json(["id": "k\(i)", "prompt": "Record \(i) begins", "max_tokens": 40, "seed": i, "temperature": 0.9]))
        }
        let input = try write("in.jsonl", lines)
        let m = model("tiny-gqa-q4_0.gguf")
        let reference = dir.appendingPathComponent("ref.jsonl").path
        let t0 = Date()
        let (status, _, err) = try Fixtures.runPuna(["batch", "-m", m, "-i", input, "-o", reference, "--parallel", "4", "-t", "2"])
        XCTAssertEqual(status, 0, err)
        let fullRun = Date().timeIntervalSince(t0)
        let want = byID(try records(reference))
        XCTAssertEqual(want.count, count)

        let out = dir.appendingPathComponent("out.jsonl").path
        var rng = SystemRandomNumberGenerator()
        var delays: [Double] = []
        var midRunKills = 0
        var scale = 0.9     // of the time the work left should take; shrinks when a run beats its kill
        var attempts = 0
        while midRunKills < 4 && attempts < 30 {
            attempts += 1
            var before = try completeRecords(out).count
            if before == count {
                // A run finished before its kill: start the file over and aim earlier.
                try FileManager.default.removeItem(atPath: out)
                before = 0
                scale *= 0.5
            }
            let p = Process()
            p.executableURL = Fixtures.punaBinary
            p.arguments = ["batch", "-m", m, "-i", input, "-o", out, "--parallel", "4", "-t", "2"]
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try p.run()
            // Somewhere within the work left (each rerun has fewer records to do).
            let left = fullRun * Double(count - before) / Double(count)
            let delay = Double.random(in: 0.01...max(0.02, left * scale), using: &rng)
            delays.append(delay)
            Thread.sleep(forTimeInterval: delay)
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            let after = try completeRecords(out)  // every line valid JSON after a kill
            _ = byID(after)                       // and no id twice
            if after.count > before && after.count < count { midRunKills += 1 }
        }
        print("resume test: \(delays.count) runs killed with SIGKILL after \(delays.map { Int($0 * 1000) }) ms, \(midRunKills) of them mid-output; an uninterrupted run takes \(Int(fullRun * 1000)) ms")
        XCTAssertGreaterThan(midRunKills, 0, "no kill landed while records were being written (delays \(delays), full run \(fullRun) s)")

        let final = try Fixtures.runPuna(["batch", "-m", m, "-i", input, "-o", out, "--parallel", "3", "-t", "1"])
        XCTAssertEqual(final.0, 0, final.2)
        let got = byID(try records(out))
        XCTAssertEqual(Set(got.keys), Set(want.keys), "delays \(delays)")
        for (id, r) in want { XCTAssertEqual(essence(got[id] ?? [:]), essence(r), "\(id), delays \(delays)") }
        // The input is read, never written.
        XCTAssertEqual(try String(contentsOfFile: input, encoding: .utf8), lines.joined(separator: "\n") + "\n")
    }

    /// A crash in the middle of writing a line leaves it cut short; the next run removes it, says
    /// so, and produces that record again.
    func testTruncatedLastLineIsRepaired() throws {
        let lines = (0..<6).map { json(["id": $0, "prompt": "Line \($0)", "max_tokens": 8, "seed": $0]) }
        let input = try write("in.jsonl", lines)
        let m = model("tiny-mha-q8_0.gguf")
        let reference = dir.appendingPathComponent("ref.jsonl").path
        XCTAssertEqual(try Fixtures.runPuna(["batch", "-m", m, "-i", input, "-o", reference]).0, 0)
        let full = try String(contentsOfFile: reference, encoding: .utf8)
        let fullLines = full.split(separator: "\n").map(String.init)
        // Keep three whole records and half of the fourth, as a kill during write(2) could.
        let cut = fullLines[0..<3].joined(separator: "\n") + "\n" + String(fullLines[3].prefix(fullLines[3].count / 2))
        let out = dir.appendingPathComponent("out.jsonl").path
        try cut.write(toFile: out, atomically: true, encoding: .utf8)
        let (status, _, err) = try Fixtures.runPuna(["batch", "-m", m, "-i", input, "-o", out])
        XCTAssertEqual(status, 0, err)
        XCTAssertTrue(err.contains("removed an unfinished last line"), err)
        XCTAssertTrue(err.contains("resuming: 3 of 6"), err)
        let got = byID(try records(out)), want = byID(try records(reference))
        XCTAssertEqual(got.count, 6)
        for (id, r) in want { XCTAssertEqual(essence(got[id]!), essence(r), id) }
        // A complete line that is not ours is not silently appended to.
        try "{\"no_id\":1}\n".write(toFile: out, atomically: true, encoding: .utf8)
        let bad = try Fixtures.runPuna(["batch", "-m", m, "-i", input, "-o", out])
        XCTAssertNotEqual(bad.0, 0)
        XCTAssertTrue(bad.2.contains("line 1 is not a record of puna batch"), bad.2)
    }

    /// Every kind of bad line gives an error record naming the problem; the good lines still run.
    func testMalformedLinesGiveErrorRecords() throws {
        let long = String(repeating: "many words here ", count: 150)
        let lines = [
            json(["id": "good1", "prompt": "Hello", "max_tokens": 4]),
            "{\"id\": \"broken\", \"prompt\": ",
            "[1, 2, 3]",
            json(["id": 1.5, "prompt": "x"]),
            json(["id": "none"]),
            json(["id": "both", "prompt": "a", "instruction": "b"]),
            json(["id": "tmpl", "prompt": "a", "template": "nonsense"]),
            json(["id": "temp", "prompt": "a", "temperature": "hot"]),
            json(["id": "topp", "prompt": "a", "top_p": 1.5]),
            json(["id": "seed", "prompt": "a", "seed": -1]),
            json(["id": "stop", "prompt": "a", "stop": [1, 2]]),
            json(["id": "adapter", "prompt": "a", "adapter": "sql"]),
            json(["id": "long", "prompt": long]),
            "",
            json(["id": "good2", "instruction": "List three fruits", "max_tokens": 4]),
        ]
        let input = try write("in.jsonl", lines)
        let out = dir.appendingPathComponent("out.jsonl").path
        let (status, _, err) = try Fixtures.runPuna(["batch", "-m", model("tiny-mha-q8_0.gguf"), "-i", input, "-o", out, "-c", "256", "--parallel", "2"])
        XCTAssertEqual(status, 0, err)
        XCTAssertTrue(err.contains("14 records, 12 errors"), err)
        let got = byID(try records(out))
        let expected: [String: String] = [
            "l:2": "invalid JSON", "l:3": "not a JSON object", "l:4": "field 'id' must be a string or an integer",
            "s:none": "needs a 'prompt' or an 'instruction'", "s:both": "not both", "s:tmpl": "unknown template 'nonsense'",
            "s:temp": "field 'temperature' must be a number", "s:topp": "field 'top_p': 1.5 is out of range",
            "s:seed": "field 'seed' must be an integer", "s:stop": "field 'stop' must be a list of strings",
            "s:adapter": "unknown adapter 'sql'", "s:long": "more than the context length 256",
        ]
        XCTAssertEqual(got.count, 14)
        for (id, message) in expected {
            let r = try XCTUnwrap(got[id], id)
            XCTAssertEqual(r["finish_reason"] as? String, "error", id)
            XCTAssertTrue((r["error"] as? String ?? "").contains(message), "\(id): \(r["error"] ?? "no error")")
            XCTAssertEqual(r["text"] as? String, "", id)
        }
        for id in ["s:good1", "s:good2"] {
            let r = try XCTUnwrap(got[id], id)
            XCTAssertNil(r["error"], id)
            XCTAssertEqual(r["tokens_out"] as? Int, 4, id)
            XCTAssertTrue(r["adapter"] is NSNull, id)
        }
    }

    /// Whole-file and flag problems stop before any work, naming the cause.
    func testBadFilesAndFlagsAreRefused() throws {
        let m = model("tiny-mha-q8_0.gguf")
        let dup = try write("dup.jsonl", [json(["id": "a", "prompt": "x"]), json(["prompt": "y"]), json(["id": "a", "prompt": "z"])])
        let out = dir.appendingPathComponent("out.jsonl").path
        var r = try Fixtures.runPuna(["batch", "-m", m, "-i", dup, "-o", out])
        XCTAssertNotEqual(r.0, 0)
        XCTAssertTrue(r.2.contains("line 3: id \"a\" is already used on line 1"), r.2)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out))
        r = try Fixtures.runPuna(["batch", "-m", m, "-i", dup, "-o", dup])
        XCTAssertTrue(r.2.contains("the input is never modified"), r.2)
        for bad in ["3/3", "1", "a/b", "-1/2", "0/0"] {
            r = try Fixtures.runPuna(["batch", "-m", m, "-i", dup, "-o", out, "--shard", bad])
            XCTAssertNotEqual(r.0, 0, bad)
            XCTAssertTrue(r.2.contains("flag --shard"), r.2)
        }
        r = try Fixtures.runPuna(["batch", "-m", m, "-i", dir.appendingPathComponent("missing.jsonl").path, "-o", out])
        XCTAssertTrue(r.2.contains("missing.jsonl: cannot read"), r.2)
        r = try Fixtures.runPuna(["batch", "-m", m, "-i", dup])
        XCTAssertTrue(r.2.contains("needs -o"), r.2)
    }

    /// --mem bounds `puna batch` as it bounds `puna run`, with one KV cache per sequence counted:
    /// --parallel 1 fits in 40 MiB, --parallel 64 (64 MiB of caches) is refused before allocating
    /// them, naming --mem, with the breakdown and advice.
    func testMemBudgetCountsEveryKVCache() throws {
        let m = model("tiny-mha-q8_0.gguf")
        let input = try write("mem.jsonl", [json(["id": "a", "prompt": "hello", "max_tokens": 2])])
        let fits = dir.appendingPathComponent("fits.jsonl").path
        var r = try Fixtures.runPuna(["batch", "-m", m, "-i", input, "-o", fits, "-c", "2048", "--parallel", "1", "--mem", "40M"])
        XCTAssertEqual(r.0, 0, r.2)
        XCTAssertEqual(try records(fits).count, 1)
        let refused = dir.appendingPathComponent("refused.jsonl").path
        r = try Fixtures.runPuna(["batch", "-m", m, "-i", input, "-o", refused, "-c", "2048", "--parallel", "64", "--mem", "40M"])
        XCTAssertNotEqual(r.0, 0)
        XCTAssertTrue(r.2.contains("the budget is 40.00 MiB (--mem 40M)"), r.2)
        XCTAssertTrue(r.2.contains("64 sequences"), r.2)
        XCTAssertTrue(r.2.contains("--parallel 64"), r.2)
        XCTAssertTrue(r.2.contains("to fit in 40.00 MiB"), r.2)
        XCTAssertTrue(((try? records(refused)) ?? []).isEmpty, "no record written")
    }

    /// --shard K/N over N processes covers every record exactly once, with the same texts as one
    /// unsharded run.
    func testShardsPartitionTheInput() throws {
        var lines = mixedInput(count: 14, maxTokens: 10)
        lines.insert("not json at all", at: 4)
        let input = try write("in.jsonl", lines)
        let m = model("tiny-tied-q8_0.gguf")
        let whole = dir.appendingPathComponent("whole.jsonl").path
        let first = try Fixtures.runPuna(["batch", "-m", m, "-i", input, "-o", whole, "--parallel", "3", "--progress-interval", "0.001"])
        XCTAssertEqual(first.0, 0, first.2)
        // stderr is not a terminal here: plain progress lines, then the summary.
        XCTAssertTrue(first.2.split(separator: "\n").contains { $0.hasPrefix("puna batch: ") && $0.contains("/15 records, ") && $0.contains(" tok/s") }, first.2)
        XCTAssertTrue(first.2.contains("puna batch: 15 records, 1 errors | prompt "), first.2)
        let want = byID(try records(whole))
        XCTAssertEqual(want.count, 15)
        var union: [[String: Any]] = []
        let n = 4
        for k in 0..<n {
            let out = dir.appendingPathComponent("shard\(k).jsonl").path
            let (status, _, err) = try Fixtures.runPuna(["batch", "-m", m, "-i", input, "-o", out, "--shard", "\(k)/\(n)", "--parallel", "2"])
            XCTAssertEqual(status, 0, err)
            let part = try records(out)
            // Record index i (0-based over non-blank lines) belongs to shard i % n.
            let expectedCount = (0..<15).filter { $0 % n == k }.count
            XCTAssertEqual(part.count, expectedCount, "shard \(k)")
            union += part
        }
        let got = byID(union)  // fails on an id in two shards
        XCTAssertEqual(Set(got.keys), Set(want.keys))
        for (id, r) in want { XCTAssertEqual(essence(got[id]!), essence(r), id) }
        // The bad line (line 5, record index 4) went to shard 0, known by its line number.
        let shard0 = byID(try records(dir.appendingPathComponent("shard0.jsonl").path))
        XCTAssertEqual(shard0["l:5"]?["finish_reason"] as? String, "error")
        // Pointing a shard at another shard's output is noticed.
        let mixed = try Fixtures.runPuna(["batch", "-m", m, "-i", input, "-o", dir.appendingPathComponent("shard0.jsonl").path,
                                          "--shard", "1/4", "-n", "1"])
        XCTAssertTrue(mixed.2.contains("holds 4 records whose ids are not among this run's records"), mixed.2)
    }
}
