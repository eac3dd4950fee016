import CPuna
import Foundation
import PunaCore
import XCTest

/// Logits and greedy generation against transformers, on the tiny models that
/// scripts/fixtures/make_models.py converted with llama.cpp's convert_hf_to_gguf.py / llama-quantize.
/// The references are transformers' logits on the weights decoded from each very file, so the
/// tolerance measures Puna's arithmetic, not the quantization.
final class ConformanceTests: XCTestCase {
    /// Largest |Puna − transformers| over all positions and the vocabulary, relative to the largest
    /// |reference logit|: F32/F16 files within 1e-3, quantized ones within 3e-2 (issue 3) with two
    /// activation levels. With one level (the default fast path, 8-bit activations like llama.cpp)
    /// quantized files get the project's figures for that case: 6e-2 for 8-bit weights, 8e-2 below.
    static func tolerance(_ type: String, activationLevels: Int = 2) -> Float {
        if type == "f32" || type == "f16" { return 1e-3 }
        if activationLevels == 2 { return 3e-2 }
        return type == "q8_0" ? 6e-2 : 8e-2
    }

    func models() throws -> [[String: Any]] {
        try XCTUnwrap(Fixtures.manifest()["models"] as? [[String: Any]])
    }

    func testLogitsMatchTransformersOnEveryFile() throws {
        let manifest = try Fixtures.manifest()
        let reference = try XCTUnwrap(manifest["reference"] as? [String: Any])
        let tokens = try XCTUnwrap(reference["tokens"] as? [Int]).map { Int32($0) }
        var report: [String] = []
        defer { puna_kernels_set_activation_levels(0) }
        for entry in try models() {
            let file = entry["file"] as! String, type = entry["type"] as! String
            let model = try LanguageModel(path: Fixtures.models.appendingPathComponent(file).path, options: ModelOptions(threads: 2))
            let expected = try Fixtures.floats(Fixtures.models.appendingPathComponent(entry["logits"] as! String))
            for levels in [2, 1] {
            puna_kernels_set_activation_levels(Int32(levels))
            for cacheType in [GGMLType.f32, .f16] {
                let cache = try model.makeCache(contextLength: 64, type: cacheType)
                let logits = try model.evaluate(tokens, cache: cache, allLogits: true)
                XCTAssertEqual(logits.count, expected.count, file)
                let scale = expected.reduce(0) { max($0, abs($1)) }
                var worst: Float = 0
                for i in 0..<min(logits.count, expected.count) { worst = max(worst, abs(logits[i] - expected[i])) }
                let relative = worst / scale
                report.append("\(file) cache \(cacheType.name), \(levels) activation level(s): max|diff|/max|logit| = \(relative)")
                // The f16 cache rounds K and V: F32 files stay within 1e-3 even so; F16 files get
                // llama.cpp's own F16 figure (2e-3) with it, and 1e-3 with an f32 cache.
                let limit: Float = type == "f16" && cacheType == .f16 ? 2e-3 : ConformanceTests.tolerance(type, activationLevels: levels)
                XCTAssertLessThanOrEqual(relative, limit, "\(file) with \(cacheType.name) cache, \(levels) activation level(s)")
            }
            }
        }
        print(report.joined(separator: "\n"))
    }

    func testPromptInBatchesEqualsOneByOne() throws {
        // Evaluating a prompt as one matrix × matrix batch, in small batches or token by token must
        // agree: they share the cache layout and positions.
        let manifest = try Fixtures.manifest()
        let tokens = try XCTUnwrap((manifest["reference"] as? [String: Any])?["tokens"] as? [Int]).map { Int32($0) }
        let path = Fixtures.models.appendingPathComponent("tiny-gqa-f32.gguf").path
        let whole = try LanguageModel(path: path, options: ModelOptions(threads: 2, batchSize: 512))
        let byThree = try LanguageModel(path: path, options: ModelOptions(threads: 1, batchSize: 3))
        let a = try whole.evaluate(tokens, cache: whole.makeCache(contextLength: 32, type: .f32), allLogits: true)
        let b = try byThree.evaluate(tokens, cache: byThree.makeCache(contextLength: 32, type: .f32), allLogits: true)
        let cache = try whole.makeCache(contextLength: 32, type: .f32)
        var c: [Float] = []
        for t in tokens { c += try whole.evaluate([t], cache: cache) }
        let scale = a.reduce(0) { max($0, abs($1)) }
        for i in 0..<a.count {
            XCTAssertEqual(a[i], b[i], accuracy: 1e-5 * scale)
            XCTAssertEqual(a[i], c[i], accuracy: 1e-5 * scale)
        }
    }

    func testGreedyGenerationMatchesTransformers() throws {
        let manifest = try Fixtures.manifest()
        let greedy = try XCTUnwrap(manifest["greedy"] as? [String: Any])
        let prompt = try XCTUnwrap(greedy["prompt_tokens"] as? [Int]).map { Int32($0) }
        var checked = 0
        for entry in try models() where entry["type"] as? String == "f32" {
            let expected = try XCTUnwrap((entry["greedy"] as? [String: Any])?["tokens"] as? [Int]).map { Int32($0) }
            let model = try LanguageModel(path: Fixtures.models.appendingPathComponent(entry["file"] as! String).path)
            XCTAssertEqual(try Fixtures.greedy(model, prompt, count: expected.count), expected, entry["file"] as! String)
            checked += 1
        }
        XCTAssertGreaterThanOrEqual(checked, 3)
    }

    func testBadInputs() throws {
        let path = Fixtures.models.appendingPathComponent("tiny-mha-f32.gguf").path
        let model = try LanguageModel(path: path)
        let cache = try model.makeCache(contextLength: 8)
        XCTAssertThrowsError(try model.evaluate([1, 512], cache: cache)) { e in
            XCTAssertTrue((e as! PunaError).message.contains("token id 512"), "\(e)")
        }
        XCTAssertThrowsError(try model.evaluate([Int32](repeating: 1, count: 9), cache: cache)) { e in
            XCTAssertTrue((e as! PunaError).message.contains("context"), "\(e)")
        }
        // A file missing a tensor, one with a wrong shape, one missing a key: rewrite the real file.
        let gguf = try GGUFFile(path: path)
        func rewrite(dropTensor: String? = nil, reshape: String? = nil, dropKey: String? = nil) throws -> String {
            var w = GGUFWriter(alignment: gguf.alignment)
            for k in gguf.keys where k != dropKey && k != "general.alignment" { w.set(k, gguf.metadata[k]!) }
            for t in gguf.tensors where t.name != dropTensor {
                var shape = t.shape
                if t.name == reshape { shape = [shape[0], shape[1] / 2] }
                let bytes = Array(gguf.data(of: t))
                let count = t.name == reshape ? bytes.count / 2 : bytes.count
                w.addTensor(name: t.name, shape: shape, type: t.type, bytes: Array(bytes[0..<count]))
            }
            let out = FileManager.default.temporaryDirectory.appendingPathComponent("puna-bad-\(UUID().uuidString).gguf").path
            try w.write(to: out)
            return out
        }
        let missingTensor = try rewrite(dropTensor: "blk.1.ffn_up.weight")
        XCTAssertThrowsError(try LanguageModel(path: missingTensor)) { e in
            XCTAssertTrue((e as! PunaError).message.contains("missing tensor 'blk.1.ffn_up.weight'"), "\(e)")
        }
        let wrongShape = try rewrite(reshape: "blk.0.attn_k.weight")
        XCTAssertThrowsError(try LanguageModel(path: wrongShape)) { e in
            XCTAssertTrue((e as! PunaError).message.contains("'blk.0.attn_k.weight' has shape"), "\(e)")
        }
        let missingKey = try rewrite(dropKey: "llama.embedding_length")
        XCTAssertThrowsError(try LanguageModel(path: missingKey)) { e in
            XCTAssertTrue((e as! PunaError).message.contains("missing key llama.embedding_length"), "\(e)")
        }
        for p in [missingTensor, wrongShape, missingKey] { try? FileManager.default.removeItem(atPath: p) }
    }
}

/// The library API as README shows it: open, tokenize, generate as an iterator, read logits.
final class LibraryAPITests: XCTestCase {
    func testReadmeExampleFlow() throws {
        let model = try LanguageModel(path: Fixtures.models.appendingPathComponent("tiny-gqa-f32.gguf").path,
                                   options: ModelOptions(threads: 2))
        let cache = try model.makeCache(contextLength: 128)
        let prompt = model.tokenizer.encode("You may convey", addBOS: true)
        var options = GenerationOptions(maxTokens: 20)
        options.sampler = .greedy
        options.stopAtEOS = false
        let generator = try Generator(model: model, cache: cache, prompt: prompt, options: options)
        var text = ""
        var ids: [Int32] = []
        for step in generator {
            text += step.text
            if step.id >= 0 { ids.append(step.id) }
        }
        XCTAssertEqual(generator.finishReason, .length)
        XCTAssertEqual(ids.count, 20)
        XCTAssertEqual(ids, generator.tokens)
        // Greedy through the iterator equals the transformers reference prefix, and the streamed
        // text equals decoding the ids.
        let greedy = try Fixtures.manifest()["greedy"] as! [String: Any]
        XCTAssertEqual(prompt.map { Int($0) }, greedy["prompt_tokens"] as? [Int])
        let gqa = (try Fixtures.manifest()["models"] as! [[String: Any]]).first { $0["file"] as? String == "tiny-gqa-f32.gguf" }!
        let expected = ((gqa["greedy"] as! [String: Any])["tokens"] as! [Int]).prefix(20).map { Int32($0) }
        XCTAssertEqual(ids, Array(expected))
        // A continuation keeps its first leading space (decode() would strip it, as llama.cpp does).
        XCTAssertEqual(text, String(decoding: ids.flatMap { model.tokenizer.pieceBytes($0) }, as: UTF8.self))
    }

    func testStopStringIsNotPrinted() throws {
        let model = try LanguageModel(path: Fixtures.models.appendingPathComponent("tiny-gqa-f32.gguf").path)
        let prompt = model.tokenizer.encode("You may convey", addBOS: true)
        var options = GenerationOptions(maxTokens: 20, sampler: .greedy, stopAtEOS: false)
        // Generate once freely, then stop on a piece of that very text.
        let free = try Generator(model: model, cache: model.makeCache(contextLength: 64), prompt: prompt, options: options)
        var full = ""
        for step in free { full += step.text }
        let chars = Array(full)
        XCTAssertGreaterThan(chars.count, 12)
        let stop = String(chars[6..<10])
        let expectedPrefix = String(full[..<full.range(of: stop)!.lowerBound])
        options.stopStrings = [stop]
        let stopped = try Generator(model: model, cache: model.makeCache(contextLength: 64), prompt: prompt, options: options)
        var text = ""
        for step in stopped { text += step.text }
        XCTAssertEqual(stopped.finishReason, .stop)
        XCTAssertEqual(text, expectedPrefix)
        XCTAssertLessThanOrEqual(stopped.keptTokenCount, stopped.tokens.count)
    }
}
