import Foundation
import PunaCore
import XCTest

/// JSON parser tests. Valid documents are cross-checked against Foundation's JSONSerialization
/// (an independent parser); malformed ones must throw a PunaError naming the byte offset, and no
/// input — truncated, mutated or deeply nested — may trap.
final class JSONValueTests: XCTestCase {
    func parse(_ text: String) throws -> JSONValue { try JSONValue.parse(text) }

    /// The error message for text that must not parse.
    func errorMessage(_ text: String, file: StaticString = #filePath, line: UInt = #line) -> String {
        do {
            let v = try JSONValue.parse(text)
            XCTFail("parsed \(text.debugDescription) as \(v)", file: file, line: line)
            return ""
        } catch {
            return error.message
        }
    }

    func errorMessage(bytes: [UInt8], file: StaticString = #filePath, line: UInt = #line) -> String {
        do {
            let v = try JSONValue.parse(bytes: bytes)
            XCTFail("parsed \(bytes) as \(v)", file: file, line: line)
            return ""
        } catch {
            return error.message
        }
    }

    /// Structural comparison with what Foundation made of the same text.
    func assertMatchesFoundation(_ text: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let mine = try parse(text)
        let theirs = try JSONSerialization.jsonObject(with: Data(text.utf8), options: [.fragmentsAllowed])
        XCTAssert(same(mine, theirs), "\(text) -> \(mine) vs \(theirs)", file: file, line: line)
    }

    func same(_ a: JSONValue, _ b: Any) -> Bool {
        switch a {
        case .null: return b is NSNull
        case .bool(let x):
            if let v = b as? Bool { return v == x }
            return (b as? NSNumber)?.boolValue == x
        case .number(let d, _):
            guard let n = b as? NSNumber else { return false }
            return n.doubleValue == d
        case .string(let s): return (b as? String) == s
        case .array(let items):
            guard let arr = b as? [Any], arr.count == items.count else { return false }
            return zip(items, arr).allSatisfy { same($0, $1) }
        case .object(let members):
            guard let dict = b as? [String: Any], dict.count == members.count else { return false }
            return members.allSatisfy { m in dict[m.key].map { same(m.value, $0) } ?? false }
        }
    }

    // MARK: valid documents

    func testValidDocumentsMatchFoundation() throws {
        let docs = [
            "{}", "[]", "0", "-0", "1", "-1", "123456789", "0.5", "-12.5e-3", "1E+2", "1e5", "2.5E-300",
            "true", "false", "null", "\"\"", "\"abc\"",
            "[1, 2.5, \"x\", true, false, null, {}, []]",
            "{\"a\": {\"b\": [1, {\"c\": null}]}, \"d\": \"e\"}",
            " \t\r\n {\"k\" : [ 1 , 2 ] } \n",
            "\"esc: \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\u0041\\u00e9\\u4e2d\"",
            "\"emoji \\ud83d\\ude00 and literal 😀, é, 中\"",
            "[1.7976931348623157e308, 5e-324, 0.1, 9007199254740993]",
        ]
        for d in docs { try assertMatchesFoundation(d) }
    }

    func testStructureAndAccessors() throws {
        let v = try parse("""
        {"name": "puna", "n": 42, "x": -1.5, "ok": true, "none": null,
         "list": [10, "b", [3]], "nested": {"z": 1, "a": 2}}
        """)
        XCTAssertEqual(v["name"]?.string, "puna")
        XCTAssertEqual(v["n"]?.int, 42)
        XCTAssertEqual(v["n"]?.double, 42)
        XCTAssertEqual(v["x"]?.double, -1.5)
        XCTAssertNil(v["x"]?.int)
        XCTAssertEqual(v["ok"]?.bool, true)
        XCTAssertEqual(v["none"]?.isNull, true)
        XCTAssertNil(v["missing"])
        XCTAssertNil(v["name"]?.int)
        XCTAssertEqual(v["list"]?[0]?.int, 10)
        XCTAssertEqual(v["list"]?[1]?.string, "b")
        XCTAssertEqual(v["list"]?[2]?[0]?.int, 3)
        XCTAssertNil(v["list"]?[3])
        XCTAssertNil(v["list"]?[-1])
        XCTAssertEqual(v["list"]?.array?.count, 3)
        XCTAssertEqual(v.keys, ["name", "n", "x", "ok", "none", "list", "nested"], "document order kept")
        XCTAssertEqual(v["nested"]?.keys, ["z", "a"])
        XCTAssertEqual(v["n"]?.numberText, "42")
        XCTAssertEqual(try parse("[1.0]"), try parse("[1]"), "numbers compare by value")
        XCTAssertNotEqual(try parse("{\"a\":1,\"b\":2}"), try parse("{\"b\":2,\"a\":1}"), "order is part of the value")
    }

    func testExactIntegers() throws {
        let big = try parse("18446744073709551615")
        XCTAssertEqual(big.uint64, UInt64.max)
        XCTAssertNil(big.int)
        XCTAssertEqual(big.numberText, "18446744073709551615")
        XCTAssertNil(try parse("18446744073709551616").uint64, "past UInt64")
        XCTAssertEqual(try parse("9223372036854775807").int, Int.max)
        XCTAssertEqual(try parse("-9223372036854775808").int, Int.min)
        XCTAssertNil(try parse("9223372036854775808").int)
        XCTAssertNil(try parse("-9223372036854775809").int)
        // Not representable as a Double, still exact through the literal.
        XCTAssertEqual(try parse("9007199254740993").int, 9_007_199_254_740_993)
        XCTAssertEqual(try parse("-0").int, 0)
        XCTAssertEqual(try parse("-0").uint64, 0)
        XCTAssertNil(try parse("-1").uint64)
        XCTAssertEqual(try parse("16.0").int, 16, "a whole float counts (Python writes lora_alpha as 16.0)")
        XCTAssertEqual(try parse("1e3").uint64, 1000)
        XCTAssertNil(try parse("1.5").int)
        XCTAssertNil(try parse("1e300").int)
        XCTAssertNil(try parse("1e16").int, "above 2^53 a float's integer value is not trustworthy")
    }

    func testUnicode() throws {
        XCTAssertEqual(try parse("\"\\u00e9\"").string, "é")
        XCTAssertEqual(try parse("\"\\uD83D\\uDE00\"").string, "😀")
        XCTAssertEqual(try parse("\"\\u0000\"").string, "\u{0}")
        XCTAssertEqual(try parse("\"\\uffff\"").string, "\u{FFFF}")
        XCTAssertEqual(try parse("\"日本語 ✓ 𝄞\"").string, "日本語 ✓ 𝄞")
        XCTAssertEqual(try parse("{\"ключ\": \"значение\"}")["ключ"]?.string, "значение")
        // A UTF-8 byte order mark before the document is tolerated.
        XCTAssertEqual(try JSONValue.parse(bytes: [0xEF, 0xBB, 0xBF] + Array("[1]".utf8)), try parse("[1]"))

        XCTAssert(errorMessage("\"\\ud800\"").contains("low surrogate"))
        XCTAssert(errorMessage("\"\\ud800\\u0041\"").contains("low surrogate"))
        XCTAssert(errorMessage("\"\\ud800x\"").contains("low surrogate"))
        XCTAssert(errorMessage("\"\\udc00\"").contains("lone low surrogate"))
        XCTAssert(errorMessage("\"\\ud83d\\ud83d\"").contains("low surrogate"))
        XCTAssert(errorMessage("\"\\u12\"").contains("hex"))
        XCTAssert(errorMessage("\"\\u12g4\"").contains("hex"))
        // Ill-formed UTF-8: overlong, encoded surrogate, past U+10FFFF, stray continuation, truncated.
        for bad: [UInt8] in [[0xC0, 0xAF], [0xE0, 0x80, 0xAF], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80],
                             [0x80], [0xFF], [0xE4, 0xB8]] {
            let msg = errorMessage(bytes: [0x22] + bad + [0x22])
            XCTAssert(msg.contains("UTF-8") && msg.contains("at byte 1"), msg)
        }
    }

    // MARK: malformed documents

    func testMalformedDocumentsNameOffsetAndExpectation() {
        let cases: [(String, Int, String)] = [
            ("", 0, "a JSON value"),
            ("   ", 3, "a JSON value"),
            ("01", 1, "leading zero"),
            ("-01", 2, "leading zero"),
            ("-", 1, "a digit"),
            ("1.", 2, "a digit after '.'"),
            (".5", 0, "a JSON value"),
            ("+1", 0, "a JSON value"),
            ("1e", 2, "exponent"),
            ("1e+", 3, "exponent"),
            ("NaN", 0, "a JSON value"),
            ("Infinity", 0, "a JSON value"),
            ("-Infinity", 1, "a digit"),
            ("tru", 0, "'true'"),
            ("nul", 0, "'null'"),
            ("True", 0, "a JSON value"),
            ("[1,]", 3, "a JSON value"),
            ("[1 2]", 3, "',' or ']'"),
            ("[1", 2, "',' or ']'"),
            ("{\"a\":1,}", 7, "object key"),
            ("{\"a\" 1}", 5, "':'"),
            ("{\"a\":1 \"b\":2}", 7, "',' or '}'"),
            ("{'a':1}", 1, "object key"),
            ("{a:1}", 1, "object key"),
            ("{\"a\":}", 5, "a JSON value"),
            ("\"abc", 4, "closing the string"),
            ("\"a\nb\"", 2, "control character"),
            ("\"a\tb\"", 2, "control character"),
            ("\"\\x\"", 2, "escape"),
            ("\"\\'\"", 2, "escape"),
            ("1 2", 2, "end of input"),
            ("{} x", 3, "end of input"),
            ("[] ]", 3, "end of input"),
            ("{\"a\":1,\"a\":2}", 7, "duplicate object key"),
            ("1e400", 0, "out of range"),
            ("-1e400", 0, "out of range"),
        ]
        for (text, offset, expected) in cases {
            let msg = errorMessage(text)
            XCTAssert(msg.contains("at byte \(offset):"), "\(text.debugDescription): \(msg)")
            XCTAssert(msg.contains(expected), "\(text.debugDescription): \(msg)")
        }
    }

    /// A PEFT adapter_config.json as written by PEFT (json.dumps with indent=2).
    let adapterConfig = """
    {
      "alpha_pattern": {},
      "auto_mapping": null,
      "base_model_name_or_path": "openlm-research/open_llama_3b_v2",
      "bias": "none",
      "fan_in_fan_out": false,
      "inference_mode": true,
      "init_lora_weights": true,
      "layers_pattern": null,
      "layers_to_transform": null,
      "lora_alpha": 16,
      "lora_dropout": 0.05,
      "modules_to_save": null,
      "peft_type": "LORA",
      "r": 8,
      "rank_pattern": {},
      "revision": null,
      "target_modules": [
        "q_proj",
        "v_proj"
      ],
      "task_type": "CAUSAL_LM",
      "note": "caf\\u00e9 \\ud83d\\ude00 \\"quoted\\"",
      "seed": 18446744073709551615,
      "scale": -1.25e-2
    }
    """

    func testAdapterConfig() throws {
        let v = try parse(adapterConfig)
        try assertMatchesFoundation(adapterConfig)
        XCTAssertEqual(v["r"]?.int, 8)
        XCTAssertEqual(v["lora_alpha"]?.int, 16)
        XCTAssertEqual(v["lora_dropout"]?.double, 0.05)
        XCTAssertEqual(v["target_modules"]?.array?.compactMap { $0.string }, ["q_proj", "v_proj"])
        XCTAssertEqual(v["peft_type"]?.string, "LORA")
        XCTAssertEqual(v["fan_in_fan_out"]?.bool, false)
        XCTAssertEqual(v["layers_to_transform"]?.isNull, true)
        XCTAssertEqual(v["note"]?.string, "café 😀 \"quoted\"")
        XCTAssertEqual(v["seed"]?.uint64, UInt64.max)
    }

    func testEveryTruncationThrows() {
        // A top-level object: no proper prefix is a complete document.
        let doc = Array(adapterConfig.trimmingCharacters(in: .whitespacesAndNewlines).utf8)
        XCTAssertNoThrow(try JSONValue.parse(bytes: doc))
        for n in 0..<doc.count {
            XCTAssertThrowsError(try JSONValue.parse(bytes: Array(doc[0..<n])), "prefix of \(n) bytes") { error in
                XCTAssert((error as? PunaError)?.message.contains("at byte") ?? false)
            }
        }
    }

    func testMutatedDocumentsNeverTrap() {
        // Every single-byte replacement with a structural or awkward byte: each result must either
        // parse or throw, and whatever parses must agree with Foundation about validity.
        let doc = Array("{\"a\":[1,-2.5e3,\"x\\u00e9\\n\",true,null],\"b\":{\"c\":false}}".utf8)
        let replacements: [UInt8] = Array("{}[]\",:0-.eE\\ un".utf8) + [0x00, 0x1F, 0x7F, 0x80, 0xC3, 0xFF]
        var parsed = 0, rejected = 0
        for i in 0..<doc.count {
            for r in replacements where doc[i] != r {
                var bytes = doc
                bytes[i] = r
                let mine = (try? JSONValue.parse(bytes: bytes)) != nil
                let theirs = (try? JSONSerialization.jsonObject(with: Data(bytes))) != nil
                if mine { parsed += 1 } else { rejected += 1 }
                // Foundation is laxer in places (duplicate keys), never stricter on these inputs.
                if mine { XCTAssert(theirs, "we accept what Foundation rejects: \(String(decoding: bytes, as: UTF8.self))") }
            }
        }
        XCTAssertGreaterThan(parsed, 0)
        XCTAssertGreaterThan(rejected, parsed)
    }

    func testNestingLimit() throws {
        let ok = String(repeating: "[", count: 128) + String(repeating: "]", count: 128)
        XCTAssertNoThrow(try parse(ok))
        let tooDeep = String(repeating: "[", count: 129) + String(repeating: "]", count: 129)
        XCTAssert(errorMessage(tooDeep).contains("nesting deeper than 128"))
        let objects = String(repeating: "{\"a\":", count: 129) + "1" + String(repeating: "}", count: 129)
        XCTAssert(errorMessage(objects).contains("nesting deeper"))
        // Hostile: far more than any stack would take if recursion were unbounded.
        XCTAssert(errorMessage(String(repeating: "[", count: 1_000_000)).contains("nesting deeper"))
        XCTAssertNoThrow(try JSONValue.parse(String(repeating: "[", count: 5) + String(repeating: "]", count: 5), maxDepth: 5))
        XCTAssertThrowsError(try JSONValue.parse("[[[]]]", maxDepth: 2))
    }

    func testJSONLinesLikeBatchInput() throws {
        let lines = """
        {"prompt": "Hello", "seed": 1, "n_predict": 32}
        {"prompt": "Zwei\\nZeilen", "seed": 9007199254740993, "temperature": 0.7}
        """.split(separator: "\n")
        let parsed = try lines.map { try parse(String($0)) }
        XCTAssertEqual(parsed[0]["prompt"]?.string, "Hello")
        XCTAssertEqual(parsed[0]["n_predict"]?.int, 32)
        XCTAssertEqual(parsed[1]["prompt"]?.string, "Zwei\nZeilen")
        XCTAssertEqual(parsed[1]["seed"]?.uint64, 9_007_199_254_740_993)
        XCTAssertEqual(parsed[1]["temperature"]?.double, 0.7)
    }
}
