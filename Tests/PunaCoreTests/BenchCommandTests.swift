import Foundation
import XCTest

/// `puna bench`: the JSON contract the comparison script relies on (not the speed).
final class BenchCommandTests: XCTestCase {
    func model(_ file: String) -> String { Fixtures.models.appendingPathComponent(file).path }

    func parse(_ text: String) throws -> [String: Any] {
        try XCTUnwrap(JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any], text)
    }

    func testJSONContract() throws {
        let file = model("tiny-gqa-q4_0.gguf")
        let (status, out, err) = try Fixtures.runPuna(["bench", "-m", file, "-p", "8", "-n", "4", "-r", "2", "-t", "2", "--json"])
        XCTAssertEqual(status, 0, err)
        XCTAssertEqual(out.filter { $0 == "\n" }.count, 1, "exactly one line: \(out)")
        let j = try parse(out)
        XCTAssertEqual(j["model"] as? String, file)
        XCTAssertEqual(j["backend"] as? String, "cpu")
        XCTAssertEqual(j["threads"] as? Int, 2)
        XCTAssertEqual(j["n_prompt"] as? Int, 8)
        XCTAssertEqual(j["n_gen"] as? Int, 4)
        XCTAssertEqual(j["reps"] as? Int, 2)
        XCTAssertEqual(j["cache_type"] as? String, "f16")
        XCTAssertEqual(j["batch_size"] as? Int, 8, "the prompt is one batch by default")
        let size = try XCTUnwrap(try FileManager.default.attributesOfItem(atPath: file)[.size] as? Int)
        XCTAssertEqual(j["model_bytes"] as? Int, size)
        XCTAssertGreaterThan(try XCTUnwrap(j["n_params"] as? Int), 0)
        XCTAssertGreaterThan(try XCTUnwrap(j["peak_rss_bytes"] as? Int), 0)

        for (key, section, tokens, name) in [("prompt_tokens_per_s", "prompt", 8, "pp8"), ("decode_tokens_per_s", "decode", 4, "tg4")] {
            let median = try XCTUnwrap(j[key] as? Double, key)
            let s = try XCTUnwrap(j[section] as? [String: Any], section)
            XCTAssertEqual(s["test"] as? String, name)
            XCTAssertEqual(s["tokens"] as? Int, tokens)
            let samplesNs = try XCTUnwrap(s["samples_ns"] as? [Int])
            let rates = try XCTUnwrap(s["samples_tokens_per_s"] as? [Double])
            XCTAssertEqual(samplesNs.count, 2, "one sample per repetition")
            XCTAssertEqual(rates.count, 2)
            for (ns, rate) in zip(samplesNs, rates) {
                XCTAssertGreaterThan(ns, 0)
                XCTAssertEqual(rate, Double(tokens) * 1e9 / Double(ns), accuracy: 1e-3 * rate + 1e-3)
            }
            // Median of two samples is their mean; min ≤ median ≤ max.
            XCTAssertEqual(median, (rates[0] + rates[1]) / 2, accuracy: 1e-3 * median + 2e-3)
            XCTAssertEqual(s["median_tokens_per_s"] as? Double, median)
            let lo = try XCTUnwrap(s["min_tokens_per_s"] as? Double), hi = try XCTUnwrap(s["max_tokens_per_s"] as? Double)
            XCTAssertEqual(lo, rates.min()!, accuracy: 2e-3)
            XCTAssertEqual(hi, rates.max()!, accuracy: 2e-3)
            XCTAssertGreaterThanOrEqual(try XCTUnwrap(s["stddev_tokens_per_s"] as? Double), 0)
        }
    }

    func testSkippedTestIsNullAndOptionsAreReported() throws {
        let (status, out, err) = try Fixtures.runPuna(["bench", "-m", model("tiny-mha-f16.gguf"), "-p", "0", "-n", "3", "-r", "1",
                                                       "-t", "1", "-ctk", "f32", "--no-warmup", "--json"])
        XCTAssertEqual(status, 0, err)
        let j = try parse(out)
        XCTAssertTrue(j["prompt_tokens_per_s"] is NSNull, out)
        XCTAssertTrue(j["prompt"] is NSNull, out)
        XCTAssertGreaterThan(try XCTUnwrap(j["decode_tokens_per_s"] as? Double), 0)
        XCTAssertEqual(j["threads"] as? Int, 1)
        XCTAssertEqual(j["cache_type"] as? String, "f32")
        XCTAssertEqual(j["warmup"] as? Bool, false)
        XCTAssertEqual(j["context"] as? Int, 3)
    }

    func testHumanTable() throws {
        let (status, out, err) = try Fixtures.runPuna(["bench", "-m", model("tiny-tied-q8_0.gguf"), "-p", "4", "-n", "2", "-r", "1", "-t", "1"])
        XCTAssertEqual(status, 0, err)
        let lines = out.split(separator: "\n").map(String.init)
        XCTAssertTrue(lines[0].hasPrefix("| model"), out)
        XCTAssertTrue(lines.contains { $0.contains("| pp4 ") && $0.contains("tiny-tied-q8_0.gguf") }, out)
        XCTAssertTrue(lines.contains { $0.contains("| tg2 ") }, out)
        XCTAssertTrue(out.contains("peak RSS"), out)
    }

    func testBadArgumentsNameTheFlag() throws {
        let cases: [([String], String)] = [
            (["bench", "-m", model("tiny-gqa-q4_0.gguf"), "--backend", "metal"], "--backend"),
            (["bench", "-m", model("tiny-gqa-q4_0.gguf"), "-r", "0"], "-r"),
            (["bench", "-m", model("tiny-gqa-q4_0.gguf"), "-p", "0", "-n", "0"], "-p and -n"),
            (["bench", "-m", model("tiny-gqa-q4_0.gguf"), "-p", "x"], "-p"),
            (["bench", "-m", model("tiny-gqa-q4_0.gguf"), "-ctk", "bogus"], "bogus"),
            (["bench", "-m", "/nonexistent/model.gguf"], "/nonexistent/model.gguf"),
            (["bench"], "-m"),
        ]
        for (args, needle) in cases {
            let (status, out, err) = try Fixtures.runPuna(args)
            XCTAssertNotEqual(status, 0, "\(args): \(out)")
            XCTAssertTrue(err.contains(needle), "\(args): \(err)")
            XCTAssertFalse(err.contains("Fatal error"), err)
        }
    }
}
