import Foundation
import PunaCore
import XCTest

/// Byte-level BPE: the hand-written pre-tokenizers against a regex engine, a tiny vocabulary made
/// here, hostile metadata, and the real vocabularies of llama.cpp's tree for special tokens, end of
/// generation and windowed tokenization.
final class BPETokenizerTests: XCTestCase {
    // MARK: pre-tokenizers

    /// Tests/Fixtures/pretokenizer/cases.json: the words of each text under each pre-tokenizer, from
    /// the `regex` package running the published patterns (scripts/fixtures/make_pretokenizer_cases.py).
    func testPreTokenizersMatchARegexEngine() throws {
        let url = Fixtures.root.appendingPathComponent("pretokenizer/cases.json")
        let json = try Fixtures.json(url)
        let cases = try XCTUnwrap(json["cases"] as? [[String: Any]])
        XCTAssertGreaterThan(cases.count, 1000)
        var failures: [String: Int] = [:]
        var total: [String: Int] = [:]
        for c in cases {
            let pre = c["pre"] as! String, text = c["text"] as! String, words = c["words"] as! [String]
            let got = try XCTUnwrap(Tokenizer.preTokenize(Array(text.utf8), preTokenizer: pre), pre)
            total[pre, default: 0] += 1
            if got != words.map({ Array($0.utf8) }) {
                failures[pre, default: 0] += 1
                XCTFail("\(pre): \(text.debugDescription) gave \(got.map { String(decoding: $0, as: UTF8.self) }), want \(words)")
            }
        }
        for name in total.keys.sorted() {
            print("pre-tokenizer \(name): \(total[name]! - failures[name, default: 0])/\(total[name]!) cases")
        }
    }

    func testUnknownPreTokenizerIsRefusedByName() {
        XCTAssertNil(Tokenizer.preTokenize([0x61], preTokenizer: "no-such-pre"))
        var m = Self.tinyVocab()
        m["tokenizer.ggml.pre"] = .string("no-such-pre")
        do {
            _ = try Tokenizer(metadata: m, source: "tiny.gguf")
            XCTFail("an unknown pre-tokenizer must be refused")
        } catch {
            XCTAssertTrue(error.message.contains("'no-such-pre'"), error.message)
            XCTAssertTrue(error.message.contains("tokenizer.ggml.pre"), error.message)
            XCTAssertTrue(error.message.contains("llama-bpe") && error.message.contains("qwen2"), "lists the supported ones: \(error.message)")
        }
        // no pre at all is llama.cpp's "default"
        m["tokenizer.ggml.pre"] = nil
        XCTAssertEqual(try Tokenizer(metadata: m, source: "tiny.gguf").preTokenizerName, "default")
    }

    // MARK: a tiny byte-level vocabulary

    /// GPT-2's byte alphabet: printable Latin-1 bytes stand for themselves, the rest take U+0100...
    static func byteChar(_ b: Int) -> String {
        var next = 0x100
        for x in 0..<256 {
            let printable = (0x21...0x7E).contains(x) || (0xA1...0xAC).contains(x) || (0xAE...0xFF).contains(x)
            let cp = printable ? x : next
            if !printable { next += 1 }
            if x == b { return String(UnicodeScalar(UInt32(cp))!) }
        }
        return ""
    }

    static let merges = ["h e", "l l", "he ll", "hell o", "\u{120} hello", "\u{120} w", "o r"]

    /// 256 byte characters, the merge results, one control and one user-defined token.
    static func tinyVocab() -> [String: GGUFValue] {
        var tokens = (0..<256).map { byteChar($0) }
        tokens += ["he", "ll", "hell", "hello", "\u{120}hello", "\u{120}w", "or", "<|endoftext|>", "<tool>"]
        var types = [Int32](repeating: 1, count: tokens.count)
        types[tokens.count - 2] = 3
        types[tokens.count - 1] = 4
        return [
            "tokenizer.ggml.model": .string("gpt2"),
            "tokenizer.ggml.pre": .string("gpt-2"),
            "tokenizer.ggml.tokens": .array(.string, tokens.map { .string($0) }),
            "tokenizer.ggml.token_type": .array(.int32, types.map { .int32($0) }),
            "tokenizer.ggml.merges": .array(.string, merges.map { .string($0) }),
            "tokenizer.ggml.bos_token_id": .uint32(UInt32(tokens.count - 2)),
            "tokenizer.ggml.eos_token_id": .uint32(UInt32(tokens.count - 2)),
        ]
    }

    func testTinyVocabulary() throws {
        let t = try Tokenizer(metadata: Self.tinyVocab(), source: "tiny.gguf")
        func id(_ piece: String) -> Int32 { t.id(ofPiece: piece)! }
        XCTAssertEqual(t.modelName, "gpt2")
        XCTAssertFalse(t.addsBOS, "byte-level BPE adds no BOS unless the file says so")
        XCTAssertEqual(t.encode("hello hello", addBOS: false), [id("hello"), id("\u{120}hello")])
        // "world": Ġw, or, l, d ("o r" outranks nothing that competes; "l d" is no merge)
        XCTAssertEqual(t.encode(" world", addBOS: false), [id("\u{120}w"), id("or"), id("l"), id("d")])
        XCTAssertEqual(t.decode(t.encode("hello world", addBOS: false)), "hello world")

        // special text: user-defined always cut out, control only with parseSpecial
        let eot = id("<|endoftext|>"), tool = id("<tool>")
        XCTAssertEqual(t.encode("a<tool>b", addBOS: false), [id("a"), tool, id("b")])
        XCTAssertFalse(t.encode("<|endoftext|>", addBOS: false).contains(eot))
        XCTAssertEqual(t.encode("hello<|endoftext|>", addBOS: false, parseSpecial: true), [id("hello"), eot])
        XCTAssertEqual(t.decode([id("hello"), eot]), "hello", "control tokens print nothing")
        XCTAssertEqual(t.decode([id("hello"), eot], renderSpecial: true), "hello<|endoftext|>")
        XCTAssertTrue(t.isEndOfGeneration(eot))
        XCTAssertFalse(t.isEndOfGeneration(tool))

        // any bytes, valid UTF-8 or not, come back exactly
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<200 {
            let bytes = (0..<Int.random(in: 0...40, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let ids = t.encode(utf8: bytes, addBOS: false)
            XCTAssertEqual(t.decodeBytes(ids), bytes)
            for i in ids { XCTAssertLessThanOrEqual(t.pieceBytes(i).count, t.maxPieceBytes) }
        }
    }

    // MARK: hostile metadata

    func assertError(_ metadata: [String: GGUFValue], mentions key: String, file: StaticString = #filePath, line: UInt = #line) {
        do {
            _ = try Tokenizer(metadata: metadata, source: "tiny.gguf")
            XCTFail("expected an error naming \(key)", file: file, line: line)
        } catch {
            XCTAssertTrue(error.message.contains(key), "'\(error.message)' should name \(key)", file: file, line: line)
            XCTAssertTrue(error.message.hasPrefix("tiny.gguf: "), "'\(error.message)' should name the file", file: file, line: line)
        }
    }

    func testHostileMetadata() {
        let good = Self.tinyVocab()
        XCTAssertNoThrow(try Tokenizer(metadata: good, source: "tiny.gguf"))
        func with(_ key: String, _ value: GGUFValue?) -> [String: GGUFValue] {
            var m = good
            m[key] = value
            return m
        }
        func withMerges(_ merges: [GGUFValue]) -> [String: GGUFValue] {
            with("tokenizer.ggml.merges", .array(.string, merges))
        }
        let mergesKey = "tokenizer.ggml.merges"
        assertError(with(mergesKey, nil), mentions: mergesKey)
        assertError(with(mergesKey, .array(.int32, [.int32(1)])), mentions: mergesKey)
        assertError(with(mergesKey, .string("h e")), mentions: mergesKey)
        assertError(withMerges([.string("he")]), mentions: "\(mergesKey)[0]")             // no space
        assertError(withMerges([.string("h e"), .string("")]), mentions: "\(mergesKey)[1]") // empty
        assertError(withMerges([.string(" ")]), mentions: "\(mergesKey)[0]")
        assertError(withMerges([.string("h ")]), mentions: "\(mergesKey)[0]")              // empty right side
        assertError(withMerges([.string("h qq")]), mentions: "\(mergesKey)[0]")            // right side not a token
        assertError(withMerges([.string("a b")]), mentions: "\(mergesKey)[0]")             // "ab" not a token
        assertError(withMerges([.invalidUTF8String([0xFF, 0x20, 0xFE])]), mentions: "\(mergesKey)[0]")
        for key in ["tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                    "tokenizer.ggml.eom_token_id", "tokenizer.ggml.padding_token_id"] {
            assertError(with(key, .uint32(1_000_000)), mentions: key)
            assertError(with(key, .int32(-1)), mentions: key)
            assertError(with(key, .string("1")), mentions: key)
        }
        assertError(with("tokenizer.ggml.pre", .uint32(3)), mentions: "tokenizer.ggml.pre")
        assertError(with("tokenizer.ggml.add_bos_token", .string("yes")), mentions: "tokenizer.ggml.add_bos_token")
        // a piece that is not UTF-8 cannot be a byte-level piece
        guard case .array(_, var tokens) = good["tokenizer.ggml.tokens"]! else { return XCTFail() }
        tokens[tokens.count - 3] = .invalidUTF8String([0xC3, 0x28])
        assertError(with("tokenizer.ggml.tokens", .array(.string, tokens)), mentions: "tokenizer.ggml.tokens[")
    }

    // MARK: real vocabularies

    func vocab(_ name: String) throws -> Tokenizer {
        guard let tree = LlamaTree.path else { throw XCTSkip("llama.cpp tree not found (set PUNA_LLAMA_TREE)") }
        return try Tokenizer(gguf: GGUFFile(path: tree + "/models/ggml-vocab-\(name).gguf"))
    }

    func testEndOfGenerationTokens() throws {
        let llama3 = try vocab("llama-bpe")
        XCTAssertTrue(llama3.addsBOS)
        let eot = try XCTUnwrap(llama3.id(ofPiece: "<|eot_id|>"))
        XCTAssertTrue(llama3.isEndOfGeneration(eot))
        XCTAssertTrue(llama3.isEndOfGeneration(llama3.eosID))
        XCTAssertFalse(llama3.isEndOfGeneration(llama3.bosID))
        XCTAssertFalse(llama3.isEndOfGeneration(try XCTUnwrap(llama3.id(ofPiece: "<|start_header_id|>"))))

        let qwen = try vocab("qwen2")
        XCTAssertTrue(qwen.isEndOfGeneration(try XCTUnwrap(qwen.id(ofPiece: "<|im_end|>"))))
        XCTAssertTrue(qwen.isEndOfGeneration(try XCTUnwrap(qwen.id(ofPiece: "<|endoftext|>"))))
        XCTAssertFalse(qwen.isEndOfGeneration(try XCTUnwrap(qwen.id(ofPiece: "<|im_start|>"))))

        let phi3 = try vocab("phi-3")
        XCTAssertTrue(phi3.isEndOfGeneration(try XCTUnwrap(phi3.id(ofPiece: "<|end|>"))))
        XCTAssertTrue(phi3.isEndOfGeneration(phi3.eosID))
    }

    func testParseSpecialOverQwen2() throws {
        let qwen = try vocab("qwen2")
        let start = try XCTUnwrap(qwen.id(ofPiece: "<|im_start|>")), end = try XCTUnwrap(qwen.id(ofPiece: "<|im_end|>"))
        let text = "<|im_start|>user\nhi<|im_end|>"
        let parsed = qwen.encode(text, addBOS: false, parseSpecial: true)
        XCTAssertEqual(parsed.first, start)
        XCTAssertEqual(parsed.last, end)
        let plain = qwen.encode(text, addBOS: false)
        XCTAssertFalse(plain.contains(start) || plain.contains(end), "special text is plain text by default")
        XCTAssertEqual(qwen.decode(plain), text)
        XCTAssertEqual(qwen.decode(parsed, renderSpecial: true), text)
    }

    func testLongTextsEqualWholeEncoding() throws {
        for name in ["llama-bpe", "qwen2", "gemma-4"] {
            let t = try vocab(name)
            let line = "Hello,  world!\n\n  indented:\t1234 caf\u{E9} \u{4F60}\u{597D}...\n \n"
            let text = Array(String(repeating: line, count: 50).utf8)
            let whole = t.encode(utf8: text, addBOS: true)
            let windowed = text.withUnsafeBufferPointer { t.encodeLong(utf8: $0, addBOS: true, window: 64) }
            XCTAssertEqual(windowed, whole, name)
            XCTAssertEqual(t.decodeBytes(whole, removeSpecial: true), text, name)
        }
    }
}
