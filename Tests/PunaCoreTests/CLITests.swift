import Foundation
import XCTest

/// The `puna` binary as a user runs it.
final class CLITests: XCTestCase {
    func models() throws -> [[String: Any]] {
        try XCTUnwrap(Fixtures.manifest()["models"] as? [[String: Any]])
    }

    func path(_ file: String) -> String { Fixtures.models.appendingPathComponent(file).path }

    func parse(_ text: String) throws -> [String: Any] {
        try XCTUnwrap(JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any], text)
    }

    func testInfoJSONMatchesConverterOutput() throws {
        // Expected values come from the HF config and gguf-py's reader (scripts/fixtures/make_models.py).
        var types: Set<String> = []
        for entry in try models() {
            let file = entry["file"] as! String
            let info = try XCTUnwrap(entry["info"] as? [String: Any])
            let (status, out, err) = try Fixtures.runPuna(["info", "-m", path(file), "--json"])
            XCTAssertEqual(status, 0, err)
            let j = try parse(out)
            for key in ["architecture", "n_layers", "n_heads", "n_kv_heads", "n_embd", "n_ff", "n_vocab"] {
                XCTAssertEqual("\(j[key]!)", "\(info[key]!)", "\(file): \(key)")
            }
            XCTAssertEqual(j["file_bytes"] as? Int, info["file_size"] as? Int, file)
            XCTAssertEqual(j["n_ctx_train"] as? Int, info["context_length"] as? Int, file)
            XCTAssertEqual((j["rope_freq_base"] as? Double).map { Float($0) }, (info["rope_freq_base"] as? Double).map { Float($0) }, file)
            XCTAssertEqual((j["rms_norm_eps"] as? Double).map { Float($0) }, (info["rms_norm_eps"] as? Double).map { Float($0) }, file)
            XCTAssertEqual(j["tensor_types"] as? [String: Int], info["tensor_types"] as? [String: Int], file)
            XCTAssertEqual(j["tokenizer_model"] as? String, "llama")
            let estimated = try XCTUnwrap(j["estimated_bytes"] as? Int)
            XCTAssertGreaterThan(estimated, j["tensor_bytes"] as! Int)
            types.insert(entry["type"] as! String)
        }
        XCTAssertTrue(types.isSuperset(of: ["f32", "f16", "q8_0", "q4_0", "q4_k_m"]), "\(types)")
    }

    func testInfoOnVocabOnlyFiles() throws {
        let tiny = Fixtures.tokenizer.appendingPathComponent("tiny-spm-vocab.gguf").path
        let (status, out, err) = try Fixtures.runPuna(["info", "-m", tiny, "--json"])
        XCTAssertEqual(status, 0, err)
        let j = try parse(out)
        XCTAssertEqual(j["vocab_only"] as? Bool, true)
        XCTAssertEqual(j["n_tensors"] as? Int, 0)
        XCTAssertEqual(j["tokenizer_vocab_size"] as? Int, try Fixtures.manifest()["vocab_size"] as? Int)
        if let tree = LlamaTree.path {
            let (s2, o2, e2) = try Fixtures.runPuna(["info", "-m", tree + "/models/ggml-vocab-llama-spm.gguf", "--json"])
            XCTAssertEqual(s2, 0, e2)
            let v = try parse(o2)
            XCTAssertEqual(v["tokenizer_vocab_size"] as? Int, 32000)
            XCTAssertEqual(v["n_embd"] as? Int, 4096)
            XCTAssertEqual(v["n_layers"] as? Int, 32)
        }
        // The human table names the tensor situation.
        let (_, table, _) = try Fixtures.runPuna(["info", "-m", tiny])
        XCTAssertTrue(table.contains("vocab-only"), table)
    }

    func testLogitsJSONContract() throws {
        let (status, out, err) = try Fixtures.runPuna(["logits", "-m", path("tiny-gqa-f32.gguf"), "--tokens", "1,339,440", "--json"])
        XCTAssertEqual(status, 0, err)
        XCTAssertEqual(out.filter { $0 == "\n" }.count, 1, "exactly one line")
        let j = try parse(out)
        XCTAssertEqual(Set(j.keys), ["tokens", "n_vocab", "logits"])
        XCTAssertEqual(j["tokens"] as? [Int], [1, 339, 440])
        let vocab = try XCTUnwrap(j["n_vocab"] as? Int)
        let rows = try XCTUnwrap(j["logits"] as? [[Double]])
        XCTAssertEqual(rows.count, 3)
        for r in rows { XCTAssertEqual(r.count, vocab) }
        // The numbers are the transformers reference's (same prefix of the reference sequence).
        let manifest = try Fixtures.manifest()
        let refTokens = (manifest["reference"] as! [String: Any])["tokens"] as! [Int]
        XCTAssertEqual(Array(refTokens.prefix(3)), [1, 339, 440])
        let expected = try Fixtures.floats(Fixtures.models.appendingPathComponent("tiny-gqa-f32.logits.bin"))
        let scale = expected.reduce(0) { max($0, abs($1)) }
        for i in 0..<3 { for v in 0..<vocab { XCTAssertEqual(Float(rows[i][v]), expected[i * vocab + v], accuracy: 1e-3 * scale) } }
        // -p tokenizes with BOS.
        let (s2, o2, _) = try Fixtures.runPuna(["logits", "-m", path("tiny-gqa-f32.gguf"), "-p", "The licensee", "--json"])
        XCTAssertEqual(s2, 0)
        XCTAssertEqual((try parse(o2)["tokens"] as? [Int])?.first, 1)
    }

    func testRunPrintsTextAndTiming() throws {
        let (status, out, err) = try Fixtures.runPuna(["run", "-m", path("tiny-gqa-q8_0.gguf"), "-p", "You may convey", "-n", "12", "--temp", "0", "-t", "2"])
        XCTAssertEqual(status, 0, err)
        XCTAssertFalse(out.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty)
        XCTAssertTrue(err.contains("prompt") && err.contains("tok/s") && err.contains("peak RSS") && err.contains("load"), err)
        // Same seed, same text; greedy is deterministic whatever the thread count.
        let (_, again, _) = try Fixtures.runPuna(["run", "-m", path("tiny-gqa-q8_0.gguf"), "-p", "You may convey", "-n", "12", "--temp", "0", "-t", "1"])
        XCTAssertEqual(out, again)
        let (_, s1, _) = try Fixtures.runPuna(["run", "-m", path("tiny-gqa-q8_0.gguf"), "-p", "You may", "-n", "16", "--seed", "7", "-t", "1"])
        let (_, s2, _) = try Fixtures.runPuna(["run", "-m", path("tiny-gqa-q8_0.gguf"), "-p", "You may", "-n", "16", "--seed", "7", "-t", "2"])
        XCTAssertEqual(s1, s2)
    }

    func testTokenizeJSON() throws {
        let vocab = Fixtures.tokenizer.appendingPathComponent("tiny-spm-vocab.gguf").path
        let (status, out, err) = try Fixtures.runPuna(["tokenize", "-m", vocab, "--json", "--", "You may convey"])
        XCTAssertEqual(status, 0, err)
        let greedy = try Fixtures.manifest()["greedy"] as! [String: Any]
        XCTAssertEqual(try parse(out)["tokens"] as? [Int], greedy["prompt_tokens"] as? [Int])
        let (_, noBOS, _) = try Fixtures.runPuna(["tokenize", "-m", vocab, "--json", "--no-bos", "--", "You may convey"])
        XCTAssertEqual(try parse(noBOS)["tokens"] as? [Int], Array((greedy["prompt_tokens"] as! [Int]).dropFirst()))
    }

    func testPerplexityMatchesReferenceLogits() throws {
        // The reference text tokenizes to the 16 reference tokens; with -c 16 that is one chunk whose
        // second half is scored, so the perplexity follows from transformers' logits alone.
        let reference = try Fixtures.manifest()["reference"] as! [String: Any]
        let tokens = reference["tokens"] as! [Int]
        let n = tokens.count
        let text = FileManager.default.temporaryDirectory.appendingPathComponent("puna-ppl-\(UUID().uuidString).txt")
        try (reference["text"] as! String).write(to: text, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: text) }
        let logits = try Fixtures.floats(Fixtures.models.appendingPathComponent("tiny-gqa-f32.logits.bin"))
        let vocab = logits.count / n
        var nll = 0.0
        for j in (n / 2)..<(n - 1) {
            let row = logits[(j * vocab)..<((j + 1) * vocab)].map { Double($0) }
            let m = row.max()!
            let logSum = log(row.reduce(0) { $0 + exp($1 - m) }) + m
            nll -= row[tokens[j + 1]] - logSum
        }
        let expected = exp(nll / Double(n - 1 - n / 2))
        let (status, out, err) = try Fixtures.runPuna(["perplexity", "-m", path("tiny-gqa-f32.gguf"), "-f", text.path, "-c", "\(n)", "--json", "-ctk", "f32"])
        XCTAssertEqual(status, 0, err)
        let j = try parse(out)
        XCTAssertEqual(j["chunks"] as? Int, 1)
        XCTAssertEqual(j["scored_tokens"] as? Int, n - 1 - n / 2)
        let ppl = try XCTUnwrap(j["perplexity"] as? Double)
        XCTAssertEqual(ppl, expected, accuracy: 1e-4 * expected)
        // Too short a text for one chunk is an error, not a NaN.
        let (s2, _, e2) = try Fixtures.runPuna(["perplexity", "-m", path("tiny-gqa-f32.gguf"), "-f", text.path, "-c", "64"])
        XCTAssertNotEqual(s2, 0)
        XCTAssertTrue(e2.contains("fewer than one chunk"), e2)
    }

    func testErrorsNameTheCause() throws {
        let model = path("tiny-mha-f32.gguf")
        let cases: [([String], String)] = [
            (["info", "--bogus"], "unknown flag '--bogus'"),
            (["frobnicate"], "unknown command 'frobnicate'"),
            (["run", "-m", model, "-p", "x", "-n", "abc"], "flag -n: 'abc' is not an integer"),
            (["run", "-m", model, "-p", "x", "--temp", "hot"], "flag --temp"),
            (["run", "-m", model], "needs -p"),
            (["run", "-m", model, "-p", "x", "--template", "nope"], "unknown template 'nope'"),
            (["run", "-m", "/nonexistent.gguf", "-p", "x"], "/nonexistent.gguf"),
            (["run", "-m", model, "-p", "x", "-c", "200000000"], "-c 200000000 needs about"),
            (["logits", "-m", model, "--tokens", "1,512", "--json"], "token id 512 is out of range"),
            (["logits", "-m", model, "--tokens", "1,x"], "'x' is not a token id"),
            (["info"], "needs -m"),
            (["info", "-m"], "flag -m needs a value"),
        ]
        for (args, needle) in cases {
            let (status, out, err) = try Fixtures.runPuna(args)
            XCTAssertNotEqual(status, 0, "\(args)")
            XCTAssertTrue(err.contains(needle), "\(args): stderr '\(err)' lacks '\(needle)'")
            XCTAssertFalse(out.contains("{"), "\(args) printed output")
        }
        for command in ["run", "chat", "logits", "tokenize", "perplexity", "info"] {
            let (status, out, _) = try Fixtures.runPuna([command, "--help"])
            XCTAssertEqual(status, 0)
            XCTAssertTrue(out.contains("usage: puna \(command)"), out)
        }
    }

    func testChatKeepsConversation() throws {
        let (status, out, err) = try Fixtures.runPuna(["chat", "-m", path("tiny-gqa-q8_0.gguf"), "--template", "guanaco", "-n", "8", "--temp", "0"],
                                                      stdin: "Hello there\nAnd again\n")
        XCTAssertEqual(status, 0, err)
        XCTAssertGreaterThanOrEqual(out.split(separator: "\n", omittingEmptySubsequences: false).count, 2, out)
    }
}

/// Where llama.cpp's tree (from the llama-cpp-python sdist) is, if fetched.
enum LlamaTree {
    static var path: String? {
        let env = ProcessInfo.processInfo.environment
        let candidate = env["PUNA_LLAMA_TREE"] ?? Fixtures.root.deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent(".cache/llama_cpp_python-0.3.36/vendor/llama.cpp").path
        if FileManager.default.fileExists(atPath: candidate + "/models/ggml-vocab-llama-spm.gguf") { return candidate }
        return nil
    }
}
