import Foundation
import PunaCore
import XCTest

/// Every `models/ggml-vocab-*.gguf` of llama.cpp's tree that comes with `.inp`/`.out` vectors (made by
/// Hugging Face `tokenizers` from the original tokenizer): ids without BOS, special text not parsed,
/// and decode(encode(x)) == x. Vocabularies of a model Puna does not have (WPM "bert") are listed
/// as not supported. Prints the table: vocab, model, pre, vectors passed/total, round trips.
final class VocabVectorTests: XCTestCase {
    struct Row {
        var vocab: String, model: String, pre: String, passed: Int, total: Int, roundTrips: Int, note: String
    }

    static func vectors(_ base: String) throws -> [(String, [Int32])] {
        let input = try String(contentsOfFile: base + ".inp", encoding: .utf8)
        let output = try String(contentsOfFile: base + ".out", encoding: .utf8)
        var texts = input.components(separatedBy: "\n__ggml_vocab_test__\n")
        if texts.last == "" { texts.removeLast() }
        var lines = output.components(separatedBy: "\n")
        if lines.last == "" { lines.removeLast() }
        XCTAssertEqual(texts.count, lines.count, "\(base): inputs and outputs pair up")
        return zip(texts, lines).map { text, line in
            (text, line.split(separator: " ").map { Int32($0)! })
        }
    }

    func testAllVocabVectors() throws {
        guard let tree = LlamaTree.path else { throw XCTSkip("llama.cpp tree not found (set PUNA_LLAMA_TREE)") }
        let models = tree + "/models"
        let names = try FileManager.default.contentsOfDirectory(atPath: models)
            .filter { $0.hasPrefix("ggml-vocab-") && $0.hasSuffix(".gguf") }.sorted()
        var rows: [Row] = []
        for name in names {
            let base = models + "/" + name
            guard FileManager.default.fileExists(atPath: base + ".inp"),
                  FileManager.default.fileExists(atPath: base + ".out") else { continue }
            let gguf = try GGUFFile(path: base)
            let model = gguf.metadata[Tokenizer.modelKey]?.stringValue ?? "?"
            let pre = gguf.metadata[Tokenizer.preKey]?.stringValue ?? "-"
            let vocab = String(name.dropFirst("ggml-vocab-".count).dropLast(".gguf".count))
            let cases = try Self.vectors(base)
            let tokenizer: Tokenizer
            do {
                tokenizer = try Tokenizer(gguf: gguf)
            } catch {
                XCTAssertEqual(model, "bert", "\(vocab) refused: \(error)")
                rows.append(Row(vocab: vocab, model: model, pre: pre, passed: 0, total: cases.count, roundTrips: 0,
                                note: "not supported (\(model))"))
                continue
            }
            var passed = 0, roundTrips = 0
            for (text, want) in cases {
                let got = tokenizer.encode(text, addBOS: false)
                XCTAssertEqual(got, want, "\(vocab): ids of \(text.debugDescription)")
                if got == want { passed += 1 }
                let back = tokenizer.decodeBytes(got)
                XCTAssertEqual(back, Array(text.utf8), "\(vocab): round trip of \(text.debugDescription)")
                if back == Array(text.utf8) { roundTrips += 1 }
            }
            rows.append(Row(vocab: vocab, model: model, pre: pre, passed: passed, total: cases.count,
                            roundTrips: roundTrips, note: ""))
        }
        print("| vocab | model | pre | vectors passed | round trips |")
        print("|---|---|---|---|---|")
        for r in rows {
            let result = r.note.isEmpty ? "\(r.passed)/\(r.total)" : r.note
            let trips = r.note.isEmpty ? "\(r.roundTrips)/\(r.total)" : "-"
            print("| \(r.vocab) | \(r.model) | \(r.pre) | \(result) | \(trips) |")
        }
        XCTAssertGreaterThanOrEqual(rows.count, 14)
    }
}
