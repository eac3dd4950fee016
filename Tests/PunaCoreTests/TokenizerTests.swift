import Foundation
import PunaCore
import XCTest

/// Tests of the SentencePiece-BPE tokenizer against independent references:
/// - llama.cpp's own vectors for its LLaMA vocabulary (`models/ggml-vocab-llama-spm.gguf{,.inp,.out}`),
/// - extra cases over the same vocabulary whose ids come from the `sentencepiece` library (a ModelProto
///   rebuilt from the GGUF pieces, scores and types) and agree with libllama's `llama_tokenize`; the
///   parse-special ids and every decoded string come from libllama (`llama_tokenize`/`llama_detokenize`),
/// - the tiny SentencePiece model of Tests/Fixtures/tokenizer (ids from `sentencepiece`), when present.
final class TokenizerTests: XCTestCase {
    static let repoRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// llama.cpp's source tree: $PUNA_LLAMA_TREE, else the copy scripts/fetch-llama-sdist unpacks.
    /// Missing: a failure when PUNA_REQUIRE_SDIST=1 (CI), otherwise a skip.
    func llamaTree() throws -> URL {
        let env = ProcessInfo.processInfo.environment
        let tree = env["PUNA_LLAMA_TREE"].map { URL(fileURLWithPath: $0) }
            ?? Self.repoRoot.appendingPathComponent(".cache/llama_cpp_python-0.3.36/vendor/llama.cpp")
        let vocab = tree.appendingPathComponent("models/ggml-vocab-llama-spm.gguf")
        if !FileManager.default.fileExists(atPath: vocab.path) {
            let message = "llama.cpp tree not found at \(tree.path) (run scripts/fetch-llama-sdist or set PUNA_LLAMA_TREE)"
            if env["PUNA_REQUIRE_SDIST"] == "1" {
                XCTFail(message)
                throw PunaError(message)
            }
            throw XCTSkip(message)
        }
        return tree
    }

    static var cachedLlama: Tokenizer?
    func llamaTokenizer() throws -> Tokenizer {
        if let t = Self.cachedLlama { return t }
        let path = try llamaTree().appendingPathComponent("models/ggml-vocab-llama-spm.gguf").path
        let t = try Tokenizer(gguf: GGUFFile(path: path))
        Self.cachedLlama = t
        return t
    }

    static func ids(_ text: String) -> [Int32] {
        text.split(separator: " ").map { Int32($0)! }
    }

    // MARK: llama.cpp's vectors

    /// The .inp file holds the inputs separated by a "\n__ggml_vocab_test__\n" line; the .out file
    /// one line of space-separated ids per input (tokenized without BOS, special text not parsed).
    func testLlamaCppVectors() throws {
        let tree = try llamaTree()
        let tokenizer = try llamaTokenizer()
        let base = tree.appendingPathComponent("models/ggml-vocab-llama-spm.gguf").path
        let input = try String(contentsOfFile: base + ".inp", encoding: .utf8)
        let output = try String(contentsOfFile: base + ".out", encoding: .utf8)
        var texts = input.components(separatedBy: "\n__ggml_vocab_test__\n")
        if texts.last == "" { texts.removeLast() }
        var expected = output.components(separatedBy: "\n")
        if expected.last == "" { expected.removeLast() }
        XCTAssertEqual(texts.count, expected.count, "inputs and outputs pair up")
        XCTAssertGreaterThan(texts.count, 40)

        var passed = 0, roundTrips = 0
        for (text, line) in zip(texts, expected) {
            let want = Self.ids(line)
            let got = tokenizer.encode(text, addBOS: false)
            XCTAssertEqual(got, want, "ids of \(text.debugDescription)")
            if got == want { passed += 1 }
            XCTAssertEqual(tokenizer.encode(text, addBOS: true), [tokenizer.bosID] + want)
            // llama.cpp's test-tokenizer-0 shows detokenize(tokenize(x)); on these inputs it gives x back.
            let decoded = tokenizer.decode(got)
            XCTAssertEqual(decoded, text, "round trip of \(text.debugDescription)")
            if decoded == text { roundTrips += 1 }
        }
        print("llama.cpp llama-spm vectors: \(passed)/\(texts.count) ids exact, \(roundTrips)/\(texts.count) round trips")
    }

    // MARK: extra cases over the LLaMA vocabulary

    struct ReferenceCase {
        let text: String
        let ids: String
        let idsParsingSpecial: String?
        let renderedSpecial: String?
        let decoded: String?
        let decodedAfterBOS: String?
        let decodedRemovingBOS: String?

        /// Absent fields repeat an earlier value: `decoded` the text, `decodedAfterBOS` a space plus
        /// `decoded`, `decodedRemovingBOS` `decodedAfterBOS`, the parse-special fields the plain ones.
        init(_ text: String, ids: String, idsParsingSpecial: String? = nil, renderedSpecial: String? = nil,
             decoded: String? = nil, decodedAfterBOS: String? = nil, decodedRemovingBOS: String? = nil) {
            self.text = text
            self.ids = ids
            self.idsParsingSpecial = idsParsingSpecial
            self.renderedSpecial = renderedSpecial
            self.decoded = decoded
            self.decodedAfterBOS = decodedAfterBOS
            self.decodedRemovingBOS = decodedRemovingBOS
        }
    }

    /// Ids: sentencepiece 0.2.x on a BPE ModelProto rebuilt from ggml-vocab-llama-spm.gguf (identity
    /// normalizer, add_dummy_prefix, no whitespace folding, byte_fallback), identical to libllama's
    /// llama_tokenize(add_special=false, parse_special=false). idsParsingSpecial: llama_tokenize with
    /// parse_special=true. Decoded strings: llama_detokenize of the ids, of [BOS]+ids, of [BOS]+ids
    /// with remove_special, and of the parse-special ids with unparse_special.
    static let referenceCases: [ReferenceCase] = [
        ReferenceCase("\u{4F60}\u{597D}\u{FF0C}\u{4E16}\u{754C}\u{FF01}\u{4ECA}\u{5929}\u{5929}\u{6C14}\u{5F88}\u{597D}\u{3002}",
                      ids: "29871 30919 31076 30214 30793 30967 30584 31482 30408 30408 233 179 151 232 193 139 31076 30267"),
        ReferenceCase("\u{65E5}\u{672C}\u{8A9E}\u{306E}\u{30C6}\u{30AD}\u{30B9}\u{30C8}\u{3092}\u{30C8}\u{30FC}\u{30AF}\u{30F3}\u{5316}\u{3057}\u{307E}\u{3059}\u{3002}\u{30AB}\u{30BF}\u{30AB}\u{30CA}\u{3068}\u{3072}\u{3089}\u{304C}\u{306A}",
                      ids: "29871 30325 30346 30968 30199 30572 30454 30255 30279 30396 30279 30185 30305 30203 30705 30326 30441 30427 30267 30439 30369 30439 30576 30364 31287 30513 30458 30371"),
        ReferenceCase("\u{D55C}\u{AD6D}\u{C5B4} \u{BB38}\u{C7A5}\u{C785}\u{B2C8}\u{B2E4} \u{B744}\u{C5B4}\u{C4F0}\u{AE30}",
                      ids: "29871 30877 31293 31129 29871 31406 31299 239 161 136 31063 30709 29871 238 160 135 31129 239 150 179 30827"),
        ReferenceCase("\u{1F600}\u{1F603}\u{1F604}\u{1F601} \u{1F916}\u{1F999} \u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}\u{200D}\u{1F466} \u{1F3F3}\u{FE0F}\u{200D}\u{1F308}",
                      ids: "29871 243 162 155 131 243 162 155 134 243 162 155 135 243 162 155 132 29871 243 162 167 153 243 162 169 156 29871 243 162 148 171 30722 243 162 148 172 30722 243 162 148 170 30722 243 162 148 169 29871 243 162 146 182 30598 30722 243 162 143 139"),
        ReferenceCase("a\u{E9}b e\u{301} caf\u{E9} cafe\u{301}",
                      ids: "263 10126 321 30103 274 28059 5777 1725 30103"),
        ReferenceCase("Stra\u{DF}e \u{130}stanbul \u{1C5} \u{FB01}ne",
                      ids: "22667 29871 30243 14411 8645 29871 202 136 29871 31017 484"),
        ReferenceCase("x     y          z",
                      ids: "921 268 343 3986 503"),
        ReferenceCase("    ",
                      ids: "418"),
        ReferenceCase("         ",
                      ids: "965"),
        ReferenceCase("line one\nline two\n\n\nline five\r\nwindows",
                      ids: "1196 697 13 1220 1023 13 13 13 1220 5320 30004 13 10499"),
        ReferenceCase("\t\tindented\ttabs\t",
                      ids: "29871 12 12 12860 287 12 21175 12"),
        ReferenceCase("0 12 345 6789 3.14159 1,000,000 2024-01-31",
                      ids: "29871 29900 29871 29896 29906 29871 29941 29946 29945 29871 29953 29955 29947 29929 29871 29941 29889 29896 29946 29896 29945 29929 29871 29896 29892 29900 29900 29900 29892 29900 29900 29900 29871 29906 29900 29906 29946 29899 29900 29896 29899 29941 29896"),
        ReferenceCase("The year 1999 and 2000000000000",
                      ids: "450 1629 29871 29896 29929 29929 29929 322 29871 29906 29900 29900 29900 29900 29900 29900 29900 29900 29900 29900 29900 29900"),
        ReferenceCase("\u{2581} already a meta space \u{2581}\u{2581}",
                      ids: "259 2307 263 12700 2913 1678",
                      decoded: "  already a meta space   "),
        ReferenceCase("<s> and </s> and <unk> as plain text",
                      ids: "529 29879 29958 322 1533 29879 29958 322 529 2960 29958 408 8656 1426",
                      idsParsingSpecial: "1 29871 322 29871 2 29871 322 29871 0 29871 408 8656 1426",
                      renderedSpecial: "<s>  and </s>  and <unk>  as plain text"),
        ReferenceCase("<0x41> <0x0A> <0xFF>",
                      ids: "529 29900 29916 29946 29896 29958 529 29900 29916 29900 29909 29958 529 29900 29916 4198 29958"),
        ReferenceCase("def f(x):\n    return x ** 2  # square\n",
                      ids: "822 285 29898 29916 1125 13 1678 736 921 3579 29871 29906 29871 396 6862 13"),
        ReferenceCase("\u{645}\u{631}\u{62D}\u{628}\u{627} \u{628}\u{627}\u{644}\u{639}\u{627}\u{644}\u{645}",
                      ids: "29871 30159 30156 30240 30177 30112 29871 30177 19233 30218 19233 30159"),
        ReferenceCase("\u{928}\u{92E}\u{938}\u{94D}\u{924}\u{947} \u{926}\u{941}\u{928}\u{93F}\u{92F}\u{93E}",
                      ids: "29871 30424 30485 30489 30296 30475 30569 29871 30694 30702 30424 30436 30640 30269"),
        ReferenceCase("\u{E2A}\u{E27}\u{E31}\u{E2A}\u{E14}\u{E35}\u{E04}\u{E23}\u{E31}\u{E1A}",
                      ids: "29871 30547 30492 30510 30547 30718 30691 30759 30297 30510 30526"),
        ReferenceCase("\u{1D54F}\u{1D56A} \u{10348} \u{1F9EC}",
                      ids: "29871 243 160 152 146 243 160 152 173 29871 243 147 144 139 29871 243 162 170 175"),
        ReferenceCase("zero\u{200B}width\u{200D}space\u{FEFF}bom",
                      ids: "5225 30166 2103 30722 3493 30143 29890 290"),
        ReferenceCase("trailing spaces   ",
                      ids: "25053 8162 1678"),
        ReferenceCase(" \n ",
                      ids: "259 13 29871"),
        ReferenceCase("\u{A0}nbsp\u{A0}\u{3000}ideographic space",
                      ids: "20246 14239 30081 30358 680 12122 2913"),
        ReferenceCase("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                      ids: "263 27137 27137 27137 27137 27137 27137 27137 27137 27137 27137 27137 27137"),
        ReferenceCase("supercalifragilisticexpialidocious antidisestablishmentarianism",
                      ids: "2428 1052 361 1431 309 391 625 26330 616 1941 8802 3677 333 275 342 370 1674 358 13956 1608"),
        ReferenceCase("Mixed \u{4E2D}\u{6587} and English, with \u{E9}mojis \u{1F389} and numbers 42!",
                      ids: "341 11925 29871 30275 30333 322 4223 29892 411 904 29885 3848 275 29871 243 162 145 140 322 3694 29871 29946 29906 29991"),
        ReferenceCase("\u{0}nul\u{1}ctrl\u{7F}del",
                      ids: "29871 3 29876 352 4 24220 130 6144"),
        ReferenceCase("I'm don't you'll we've they're",
                      ids: "306 29915 29885 1016 29915 29873 366 29915 645 591 29915 345 896 29915 276"),
        ReferenceCase("<s>Hello</s>",
                      ids: "529 29879 29958 10994 829 29879 29958",
                      idsParsingSpecial: "1 15043 2",
                      renderedSpecial: "<s> Hello</s>"),
        ReferenceCase("a<unk>b",
                      ids: "263 29966 2960 29958 29890",
                      idsParsingSpecial: "263 0 289",
                      renderedSpecial: "a<unk> b"),
        ReferenceCase("</s></s>",
                      ids: "1533 29879 2565 29879 29958",
                      idsParsingSpecial: "2 2",
                      renderedSpecial: "</s></s>"),
        ReferenceCase(" <s> x",
                      ids: "29871 529 29879 29958 921",
                      idsParsingSpecial: "259 1 29871 921",
                      renderedSpecial: " <s>  x"),
        ReferenceCase("<s>",
                      ids: "529 29879 29958",
                      idsParsingSpecial: "1",
                      renderedSpecial: "<s>"),
        ReferenceCase("\n<s>\n",
                      ids: "29871 13 29966 29879 29958 13",
                      idsParsingSpecial: "29871 13 1 29871 13",
                      renderedSpecial: "\n<s> \n"),
        ReferenceCase("<0x0A>",
                      ids: "529 29900 29916 29900 29909 29958"),
    ]

    func testReferenceCasesOverLlamaVocab() throws {
        let tokenizer = try llamaTokenizer()
        var passed = 0
        for c in Self.referenceCases {
            let want = Self.ids(c.ids)
            let got = tokenizer.encode(c.text, addBOS: false)
            XCTAssertEqual(got, want, "ids of \(c.text.debugDescription)")
            let wantSpecial = Self.ids(c.idsParsingSpecial ?? c.ids)
            let gotSpecial = tokenizer.encode(c.text, addBOS: false, parseSpecial: true)
            XCTAssertEqual(gotSpecial, wantSpecial, "parse-special ids of \(c.text.debugDescription)")

            let decoded = c.decoded ?? c.text
            let afterBOS = c.decodedAfterBOS ?? " " + decoded
            let removingBOS = c.decodedRemovingBOS ?? afterBOS
            let rendered = c.renderedSpecial ?? decoded
            XCTAssertEqual(tokenizer.decode(want), decoded, "decode of \(c.text.debugDescription)")
            XCTAssertEqual(tokenizer.decode([tokenizer.bosID] + want), afterBOS)
            XCTAssertEqual(tokenizer.decode([tokenizer.bosID] + want, removeSpecial: true), removingBOS)
            XCTAssertEqual(tokenizer.decode(wantSpecial, renderSpecial: true), rendered)
            if got == want && gotSpecial == wantSpecial && tokenizer.decode(want) == decoded { passed += 1 }
        }
        print("extra reference cases over the LLaMA vocab: \(passed)/\(Self.referenceCases.count) pass")
    }

    func testLlamaVocabFacts() throws {
        let t = try llamaTokenizer()
        XCTAssertEqual(t.vocabSize, 32000)
        XCTAssertEqual(t.bosID, 1)
        XCTAssertEqual(t.eosID, 2)
        XCTAssertEqual(t.unknownID, 0)
        XCTAssertTrue(t.addsBOS)
        XCTAssertFalse(t.addsEOS)
        XCTAssertTrue(t.isControl(t.bosID))
        XCTAssertTrue(t.isControl(t.eosID))
        XCTAssertFalse(t.isControl(t.unknownID))
        XCTAssertEqual(t.tokenType(t.unknownID), .unknown)
        // Byte tokens print their byte; normal pieces print "▁" as a space; control tokens nothing.
        for b in 0..<256 {
            let id = t.id(ofPiece: String(format: "<0x%02X>", b))!
            XCTAssertEqual(t.tokenType(id), .byte)
            XCTAssertEqual(t.pieceBytes(id), [UInt8(b)])
        }
        let hello = t.id(ofPiece: "\u{2581}Hello")!
        XCTAssertEqual(t.pieceBytes(hello), Array(" Hello".utf8))
        XCTAssertEqual(t.pieceBytes(t.bosID), [])
        XCTAssertEqual(t.pieceBytes(t.bosID, renderSpecial: true), Array("<s>".utf8))
        XCTAssertEqual(t.pieceBytes(-1), [])
        XCTAssertEqual(t.pieceBytes(Int32(t.vocabSize)), [])
        XCTAssertEqual(t.encode(""), [t.bosID], "the file's default adds BOS, even to empty text")
        XCTAssertEqual(t.encode("", addBOS: false), [])
    }

    /// llama.cpp's test-tokenizer-1-spm properties: every token's text (control tokens included)
    /// survives detokenize -> tokenize -> detokenize, and so does every single code point (but "▁").
    func testEveryTokenAndCodePointRoundTrips() throws {
        let t = try llamaTokenizer()
        var tokenFailures = 0
        for id in 0..<Int32(t.vocabSize) {
            let text = t.decodeBytes([id], renderSpecial: true)
            let again = t.decodeBytes(t.encode(utf8: text, addBOS: false, parseSpecial: true), renderSpecial: true)
            if again != text {
                tokenFailures += 1
                if tokenFailures < 5 { XCTFail("token \(id) '\(t.piece(id))' does not round-trip: \(text) -> \(again)") }
            }
        }
        XCTAssertEqual(tokenFailures, 0)

        var codePointFailures = 0, checked = 0
        for cp in UInt32(0)..<0x110000 {
            if (0xD800...0xDFFF).contains(cp) || (0x40000...0xE0000).contains(cp) || cp == 0x2581 { continue }
            let s = String(Unicode.Scalar(cp)!)
            checked += 1
            if t.decode(t.encode(s, addBOS: false, parseSpecial: true)) != s {
                codePointFailures += 1
                if codePointFailures < 5 { XCTFail("code point U+\(String(cp, radix: 16)) does not round-trip") }
            }
        }
        XCTAssertEqual(codePointFailures, 0)
        print("round trips: \(t.vocabSize) tokens, \(checked) code points")
    }

    // MARK: the tiny SentencePiece fixture

    func testTinySpmFixture() throws {
        let dir = Self.repoRoot.appendingPathComponent("Tests/Fixtures/tokenizer")
        let vocabPath = dir.appendingPathComponent("tiny-spm-vocab.gguf").path
        let casesPath = dir.appendingPathComponent("tiny-spm.json").path
        guard FileManager.default.fileExists(atPath: vocabPath), FileManager.default.fileExists(atPath: casesPath) else {
            throw XCTSkip("Tests/Fixtures/tokenizer/tiny-spm-vocab.gguf and tiny-spm.json are not there yet")
        }
        let tokenizer = try Tokenizer(gguf: GGUFFile(path: vocabPath))
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: casesPath)))
        let root = try XCTUnwrap(json as? [String: Any])
        let cases = try XCTUnwrap(root["cases"] as? [[String: Any]])
        XCTAssertGreaterThan(cases.count, 20)
        XCTAssertEqual(tokenizer.vocabSize, root["vocab_size"] as? Int)
        XCTAssertEqual(Int(tokenizer.bosID), root["bos_id"] as? Int)
        XCTAssertEqual(Int(tokenizer.eosID), root["eos_id"] as? Int)
        XCTAssertEqual(Int(tokenizer.unknownID), root["unk_id"] as? Int)
        func ids(_ any: Any?) -> [Int32]? { (any as? [Int])?.map { Int32($0) } }
        var passed = 0
        for c in cases {
            let text = try XCTUnwrap(c["text"] as? String)
            // Where llama-tokenize disagreed with sentencepiece the fixture records both; Puna follows llama.cpp.
            let want = try XCTUnwrap(ids(c["llama_cpp_ids"]) ?? ids(c["ids"]))
            let wantBOS = try XCTUnwrap(ids(c["llama_cpp_ids_bos"]) ?? ids(c["ids_bos"]))
            let got = tokenizer.encode(text, addBOS: false)
            XCTAssertEqual(got, want, "ids of \(text.debugDescription)")
            XCTAssertEqual(tokenizer.encode(text, addBOS: true), wantBOS, "ids with BOS of \(text.debugDescription)")
            if let pieces = c["pieces"] as? [String] {
                XCTAssertEqual(want.map { tokenizer.piece($0) }, pieces)
            }
            let decoded = try XCTUnwrap(c["decoded"] as? String)
            XCTAssertEqual(tokenizer.decode(want), decoded, "decode of \(text.debugDescription)")
            if got == want && tokenizer.decode(want) == decoded { passed += 1 }
        }
        print("tiny-spm fixture (sentencepiece ids): \(passed)/\(cases.count) pass")
    }

    // MARK: streaming

    /// A small vocabulary made here: all 256 byte tokens, a few pieces, one user-defined token.
    static func smallVocab() -> [String: GGUFValue] {
        var pieces: [(String, Float, Int32)] = [("<unk>", 0, 2), ("<s>", 0, 3), ("</s>", 0, 3)]
        for b in 0..<256 { pieces.append((String(format: "<0x%02X>", b), 0, 6)) }
        pieces += [("\u{2581}", -1, 1), ("a", -2, 1), ("b", -3, 1), ("ab", -4, 1), ("\u{2581}ab", -5, 1),
                   ("\u{E9}", -6, 1), ("<|user|>", 0, 4)]
        return [
            "tokenizer.ggml.model": .string("llama"),
            "tokenizer.ggml.tokens": .array(.string, pieces.map { .string($0.0) }),
            "tokenizer.ggml.scores": .array(.float32, pieces.map { .float32($0.1) }),
            "tokenizer.ggml.token_type": .array(.int32, pieces.map { .int32($0.2) }),
            "tokenizer.ggml.bos_token_id": .uint32(1),
            "tokenizer.ggml.eos_token_id": .uint32(2),
            "tokenizer.ggml.unknown_token_id": .uint32(0),
        ]
    }

    func testStreamingHoldsBackUnfinishedCharacters() throws {
        let t = try Tokenizer(metadata: Self.smallVocab(), source: "small")
        func byteID(_ b: UInt8) -> Int32 { t.id(ofPiece: String(format: "<0x%02X>", b))! }
        var stream = TextStreamDecoder(tokenizer: t)
        let emoji = Array("\u{1F600}".utf8)  // F0 9F 98 80
        for b in emoji.dropLast() {
            XCTAssertEqual(stream.append(byteID(b)), "", "no text before the character is complete")
        }
        XCTAssertEqual(stream.pendingByteCount, 3)
        XCTAssertEqual(stream.append(byteID(emoji.last!)), "\u{1F600}")
        XCTAssertEqual(stream.pendingByteCount, 0)

        // A complete character followed by the first half of the next one releases only the first.
        XCTAssertEqual(stream.append(t.id(ofPiece: "a")!), "a")
        XCTAssertEqual(stream.append(byteID(0xC3)), "")
        XCTAssertEqual(stream.append(byteID(0xA9)), "\u{E9}")
        XCTAssertEqual(stream.append(t.bosID), "", "control tokens print nothing")

        // An unfinished character at the end comes out of flush() as one replacement character.
        XCTAssertEqual(stream.append(byteID(0xE4)), "")
        XCTAssertEqual(stream.append(byteID(0xBD)), "")
        XCTAssertEqual(stream.flush(), "\u{FFFD}")
        XCTAssertEqual(stream.flush(), "")

        // A stray continuation byte can never be completed: it is released at once, not held.
        XCTAssertEqual(stream.append(byteID(0x80)), "\u{FFFD}")
        XCTAssertEqual(stream.pendingByteCount, 0)
    }

    func testStreamingMatchesDecodeOverLlamaVocab() throws {
        let t = try llamaTokenizer()
        let text = Self.referenceCases.map(\.text).filter { !$0.contains("\u{2581}") }.joined(separator: " | ")
        let ids = t.encode(text, addBOS: true)
        var stream = TextStreamDecoder(tokenizer: t, stripsLeadingSpace: true)
        var streamed = ""
        var heldBack = 0
        for id in ids {
            let piece = stream.append(id)
            XCTAssertFalse(piece.unicodeScalars.contains("\u{FFFD}"), "never half a character")
            if piece.isEmpty { heldBack += 1 }
            streamed += piece
        }
        streamed += stream.flush()
        XCTAssertGreaterThan(heldBack, 10, "the text has byte-fallback characters to hold back")
        XCTAssertEqual(streamed, t.decode(ids))
        XCTAssertEqual(streamed, " " + text, "llama.cpp keeps the space after a leading BOS")

        // Without BOS and with the dummy space stripped, the stream gives the text back.
        var plain = TextStreamDecoder(tokenizer: t, stripsLeadingSpace: true)
        let back = t.encode(text, addBOS: false).map { plain.append($0) }.joined() + plain.flush()
        XCTAssertEqual(back, text)
    }

    // MARK: malformed vocabularies

    func assertError(_ metadata: [String: GGUFValue], mentions key: String, file: StaticString = #filePath, line: UInt = #line) {
        do {
            _ = try Tokenizer(metadata: metadata, source: "vocab.gguf")
            XCTFail("expected an error naming \(key)", file: file, line: line)
        } catch {
            XCTAssertTrue(error.message.contains(key), "'\(error.message)' should name \(key)", file: file, line: line)
            XCTAssertTrue(error.message.hasPrefix("vocab.gguf: "), "'\(error.message)' should name the file", file: file, line: line)
        }
    }

    func testMalformedVocabularies() throws {
        let good = Self.smallVocab()
        XCTAssertNoThrow(try Tokenizer(metadata: good, source: "vocab.gguf"))
        func with(_ key: String, _ value: GGUFValue?) -> [String: GGUFValue] {
            var m = good
            m[key] = value
            return m
        }
        let tokens = "tokenizer.ggml.tokens", scores = "tokenizer.ggml.scores", types = "tokenizer.ggml.token_type"
        assertError(with("tokenizer.ggml.model", nil), mentions: "tokenizer.ggml.model")
        assertError(with("tokenizer.ggml.model", .string("bert")), mentions: "tokenizer.ggml.model")
        assertError(with("tokenizer.ggml.model", .uint32(1)), mentions: "tokenizer.ggml.model")
        assertError(with(tokens, nil), mentions: tokens)
        assertError(with(tokens, .array(.int32, [.int32(1)])), mentions: tokens)
        assertError(with(tokens, .string("a")), mentions: tokens)
        assertError(with(tokens, .array(.string, [])), mentions: tokens)
        assertError(with(scores, .array(.float32, [.float32(0), .float32(1)])), mentions: scores)
        assertError(with(scores, .array(.string, [.string("x")])), mentions: scores)
        assertError(with(types, .array(.int32, [.int32(1)])), mentions: types)
        let count = good[tokens]!.arrayValue!.count
        assertError(with(types, .array(.int32, (0..<count).map { .int32($0 == 5 ? 9 : 1) })), mentions: types)
        assertError(with(types, .array(.uint8, (0..<count).map { _ in .uint8(1) })), mentions: types)
        for key in ["tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                    "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id"] {
            assertError(with(key, .uint32(UInt32(count))), mentions: key)
            assertError(with(key, .int32(-1)), mentions: key)
            assertError(with(key, .string("1")), mentions: key)
        }
        assertError(with("tokenizer.ggml.add_bos_token", .uint8(1)), mentions: "tokenizer.ggml.add_bos_token")
        assertError(with("tokenizer.ggml.add_space_prefix", .string("yes")), mentions: "tokenizer.ggml.add_space_prefix")

        // the same piece twice, and a byte-typed token that is no <0xNN>
        var pieces = good[tokens]!.arrayValue!
        pieces[10] = pieces[11]
        assertError(with(tokens, .array(.string, pieces)), mentions: tokens)
        var typeValues = good[types]!.arrayValue!
        typeValues[count - 2] = .int32(6)  // "é" as a byte token
        assertError(with(types, .array(.int32, typeValues)), mentions: types)

        // Too small for the default special ids when the keys are absent.
        var tiny = with(tokens, .array(.string, [.string("<unk>")]))
        tiny[scores] = nil
        tiny[types] = nil
        tiny["tokenizer.ggml.bos_token_id"] = nil
        assertError(tiny, mentions: "tokenizer.ggml.bos_token_id")
    }

    func testMalformedVocabularyFileNamesPathAndKey() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("puna-tokenizer-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        var metadata = Self.smallVocab()
        metadata["tokenizer.ggml.scores"] = .array(.float32, [.float32(0)])
        var writer = GGUFWriter()
        for (key, value) in metadata.sorted(by: { $0.key < $1.key }) { writer.set(key, value) }
        let path = dir.appendingPathComponent("bad-vocab.gguf").path
        try writer.write(to: path)
        XCTAssertThrowsError(try Tokenizer(gguf: GGUFFile(path: path))) { error in
            let message = (error as? PunaError)?.message ?? ""
            XCTAssertTrue(message.contains("bad-vocab.gguf"), message)
            XCTAssertTrue(message.contains("tokenizer.ggml.scores"), message)
        }
        // The same vocabulary with its scores whole loads from the file.
        var good = GGUFWriter()
        for (key, value) in Self.smallVocab().sorted(by: { $0.key < $1.key }) { good.set(key, value) }
        try good.write(to: path)
        let t = try Tokenizer(gguf: GGUFFile(path: path))
        XCTAssertEqual(t.vocabSize, Self.smallVocab()["tokenizer.ggml.tokens"]!.arrayValue!.count)
    }

    // MARK: behaviour that has no reference to compare with

    func testSmallVocabularyBehaviour() throws {
        let t = try Tokenizer(metadata: Self.smallVocab(), source: "small")
        let user = t.id(ofPiece: "<|user|>")!
        XCTAssertEqual(t.tokenType(user), .userDefined)
        // A user-defined token is cut out of the text even without parseSpecial, and the fragment
        // after it gets the dummy space again; it decodes to its raw text.
        let ids = t.encode("ab<|user|>ab", addBOS: false)
        XCTAssertEqual(ids, [t.id(ofPiece: "\u{2581}ab")!, user, t.id(ofPiece: "\u{2581}ab")!])
        XCTAssertEqual(t.decode(ids), "ab<|user|> ab")
        // Canonically equivalent spellings stay distinct: precomposed é is a piece, e + U+0301 is not.
        XCTAssertNotNil(t.id(ofPiece: "\u{E9}"))
        XCTAssertNil(t.id(ofPiece: "e\u{301}"))
        // A character outside the vocabulary with no byte tokens for it falls back to <unk>.
        var noBytes = Self.smallVocab()
        let pieces = ["<unk>", "<s>", "</s>", "\u{2581}", "a"]
        noBytes["tokenizer.ggml.tokens"] = .array(.string, pieces.map { .string($0) })
        noBytes["tokenizer.ggml.scores"] = .array(.float32, pieces.map { _ in .float32(0) })
        noBytes["tokenizer.ggml.token_type"] = .array(.int32, [.int32(2), .int32(3), .int32(3), .int32(1), .int32(1)])
        let u = try Tokenizer(metadata: noBytes, source: "no-bytes")
        XCTAssertEqual(u.encode("a\u{E9}", addBOS: false), [3, 4, 0, 0], "two bytes of é, each <unk>")
        // Raw bytes that are not UTF-8 go through byte fallback; like llama.cpp, a bad lead byte
        // takes the following bytes into its symbol, so "b" comes out as a byte too.
        XCTAssertEqual(t.encode(utf8: [0x61, 0xFF, 0x62], addBOS: false).map { t.piece($0) },
                       ["\u{2581}", "a", "<0xFF>", "<0x62>"])
    }

    // MARK: scaling

    func testEncodingScalesLinearly() throws {
        let t = try llamaTokenizer()
        let paragraph = """
        The quick brown fox jumps over the lazy dog while the engineers measure how fast a SentencePiece \
        tokenizer can split long prompts. Numbers like 3.14159, 2024-01-31 and 1,000,000 are split digit by \
        digit; code such as `for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }` keeps its punctuation, \
        and other scripts — 你好，世界 / Привет, мир / 😀🚀 — fall back to bytes when needed.\n
        """
        let text = String(repeating: paragraph, count: 40)
        _ = t.encode(text, addBOS: true)  // warm up
        var best = Double.infinity
        var count = 0
        for _ in 0..<5 {
            let start = DispatchTime.now().uptimeNanoseconds
            count = t.encode(text, addBOS: true).count
            best = min(best, Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6)
        }
        let perTwoK = best * 2000 / Double(count)
        print(String(format: "encode speed: %d bytes -> %d tokens in %.2f ms (%.2f ms per 2k tokens, %.0f tokens/s)",
                     text.utf8.count, count, best, perTwoK, Double(count) / best * 1000))
        XCTAssertGreaterThan(count, 2000)

        // No quadratic corner (one long word, long text): ten times the input takes about ten times
        // as long, not a hundred. A ratio, not a time, so a loaded or sanitized build does not fail it;
        // speed itself is measured by scripts/bench-tokenize.
        for (name, unit) in [("'a' repeated", "a"), ("the paragraph", paragraph)] {
            func fastest(_ n: Int) -> (ms: Double, tokens: Int) {
                let input = String(repeating: unit, count: n)
                var best = Double.infinity, tokens = 0
                for _ in 0..<3 {
                    let start = DispatchTime.now().uptimeNanoseconds
                    tokens = t.encode(input, addBOS: false).count
                    best = min(best, Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6)
                }
                return (best, tokens)
            }
            let small = unit.count == 1 ? 2000 : 25, large = 10 * small
            let (msSmall, tokensSmall) = fastest(small)
            let (msLarge, tokensLarge) = fastest(large)
            let ratio = msLarge / max(msSmall, 0.05)
            print(String(format: "encode scaling, %@: %d tokens in %.1f ms, %d tokens in %.1f ms (%.1fx for 10x the text)",
                         name, tokensSmall, msSmall, tokensLarge, msLarge, ratio))
            XCTAssertGreaterThan(tokensLarge, 5 * tokensSmall)
            XCTAssertLessThan(ratio, 40, "\(name): encoding grows faster than linearly")
        }
    }
}
