import Foundation
import PunaCore
import XCTest

/// Files of a known architecture that lack a tensor or key, or have a wrong shape, and files of an
/// unknown architecture: each is refused with a message naming what is wrong.
final class ArchitectureInputTests: XCTestCase {
    var directory: URL!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("puna-arch-input-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: directory) }

    /// tiny-mha-f32.gguf (a llama file) rewritten: keys renamed from `llama.` to `arch.`, with
    /// tensors added, dropped or reshaped.
    /// Or another fixture (`source`), its keys kept, some set to new values.
    func rewrite(_ name: String, arch: String, source sourcePath: String? = nil, dropKeys: [String] = [], setKeys: [String: GGUFValue] = [:],
                 dropTensors: [String] = [], addTensors: [(String, [Int])] = [], reshape: [String: [Int]] = [:]) throws -> String {
        let source = try GGUFFile(path: sourcePath ?? Fixtures.models.appendingPathComponent("tiny-mha-f32.gguf").path)
        var w = GGUFWriter()
        for key in source.keys {
            var newKey = key
            if key.hasPrefix("llama.") { newKey = arch + "." + key.dropFirst("llama.".count) }
            if key == "general.architecture" { w.set(key, .string(arch)); continue }
            if dropKeys.contains(newKey) || setKeys[newKey] != nil { continue }
            w.set(newKey, source[key]!)
        }
        for (key, value) in setKeys.sorted(by: { $0.key < $1.key }) { w.set(key, value) }
        for t in source.tensors where !dropTensors.contains(t.name) {
            if let shape = reshape[t.name] {
                let count = shape.reduce(1, *)
                w.addTensor(name: t.name, shape: shape, type: .f32, bytes: [UInt8](repeating: 0, count: 4 * count))
            } else {
                w.addTensor(name: t.name, shape: t.shape, type: t.type, bytes: Array(source.data(of: t)))
            }
        }
        for (tensor, shape) in addTensors {
            w.addTensor(name: tensor, shape: shape, type: .f32, bytes: [UInt8](repeating: 0, count: 4 * shape.reduce(1, *)))
        }
        let path = directory.appendingPathComponent(name).path
        try w.write(to: path)
        return path
    }

    func message(_ path: String, file: StaticString = #filePath, line: UInt = #line) -> String {
        do {
            _ = try LanguageModel(path: path, options: ModelOptions(threads: 1))
            XCTFail("\(path) loaded", file: file, line: line)
        } catch let error as PunaError {
            return error.message
        } catch {
            XCTFail("not a PunaError: \(error)", file: file, line: line)
        }
        return ""
    }

    func testUnknownArchitectureListsTheSupportedOnes() throws {
        let m = message(try rewrite("mamba.gguf", arch: "mamba"))
        XCTAssertTrue(m.contains("'mamba' is not supported"), m)
        for arch in ["llama", "qwen2", "qwen3", "phi3"] { XCTAssertTrue(m.contains(arch), m) }
        // The CLI says the same and exits 1.
        let (status, _, err) = try Fixtures.runPuna(["info", "-m", try rewrite("mamba2.gguf", arch: "mamba")])
        XCTAssertEqual(status, 1)
        XCTAssertTrue(err.contains("'mamba' is not supported") && err.contains("qwen3"), err)
    }

    func testMissingTensorsAndKeysAreNamed() throws {
        // qwen2 needs Q/K/V biases; a llama-shaped file without them is not a Qwen2 model.
        let noBias = message(try rewrite("qwen2.gguf", arch: "qwen2"))
        XCTAssertTrue(noBias.contains("missing tensor 'blk.0.attn_q.bias'") && noBias.contains("qwen2"), noBias)
        // qwen3 needs per-head Q/K norms.
        let noNorm = message(try rewrite("qwen3.gguf", arch: "qwen3"))
        XCTAssertTrue(noNorm.contains("missing tensor 'blk.0.attn_q_norm.weight'"), noNorm)
        // Any architecture: a missing matrix or key is named.
        let noDown = message(try rewrite("down.gguf", arch: "llama", dropTensors: ["blk.1.ffn_down.weight"]))
        XCTAssertTrue(noDown.contains("missing tensor 'blk.1.ffn_down.weight'"), noDown)
        let noHeads = message(try rewrite("heads.gguf", arch: "phi3", dropKeys: ["phi3.attention.head_count"]))
        XCTAssertTrue(noHeads.contains("missing key phi3.attention.head_count"), noHeads)
        // Tensors an architecture has no use for are refused rather than ignored.
        let stray = message(try rewrite("stray.gguf", arch: "llama", addTensors: [("blk.0.attn_q_norm.weight", [16])]))
        XCTAssertTrue(stray.contains("'blk.0.attn_q_norm.weight' is not part of Puna's llama"), stray)
        let longRoPE = message(try rewrite("longrope.gguf", arch: "llama", addTensors: [("rope_factors_long.weight", [8]), ("rope_factors_short.weight", [8])]))
        XCTAssertTrue(longRoPE.contains("LongRoPE") && longRoPE.contains("llama"), longRoPE)
    }

    func testWrongShapesAreNamed() throws {
        let source = try GGUFFile(path: Fixtures.models.appendingPathComponent("tiny-mha-f32.gguf").path)
        let q = try XCTUnwrap(source.tensorInfo("blk.0.attn_q.weight"))
        let bad = message(try rewrite("shape.gguf", arch: "llama", reshape: ["blk.0.attn_q.weight": [q.shape[0], q.shape[1] + 2]]))
        XCTAssertTrue(bad.contains("'blk.0.attn_q.weight' has shape") && bad.contains("expected"), bad)
        // A fused QKV of the wrong height (phi3 reads attn_qkv when present).
        let e = q.shape[0]
        let fused = message(try rewrite("qkv.gguf", arch: "phi3",
                                        dropTensors: ["blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight"],
                                        addTensors: [("blk.0.attn_qkv.weight", [e, 2 * e])]))
        XCTAssertTrue(fused.contains("'blk.0.attn_qkv.weight' has shape [\(e), \(2 * e)], expected [\(e), \(3 * e)]"), fused)
        // A bias of the wrong length.
        let bias = message(try rewrite("bias.gguf", arch: "llama", addTensors: [("blk.0.attn_k.bias", [e + 1])]))
        XCTAssertTrue(bias.contains("'blk.0.attn_k.bias' has shape [\(e + 1)], expected [\(e)]"), bias)
        // A per-head norm must be one head wide.
        let norm = message(try rewrite("norm.gguf", arch: "qwen3",
                                       addTensors: [("blk.0.attn_q_norm.weight", [e]), ("blk.0.attn_k_norm.weight", [e]),
                                                    ("blk.1.attn_q_norm.weight", [e]), ("blk.1.attn_k_norm.weight", [e])]))
        XCTAssertTrue(norm.contains("'blk.0.attn_q_norm.weight' has shape [\(e)], expected [\(e / 4)]"), norm)
    }

    /// Gemma's and BLOOM's own tensors and keys: missing, out of range or malformed, each named.
    func testGemmaAndBloomInputsAreChecked() throws {
        func arch(_ file: String) -> String { ArchitectureTests.root.appendingPathComponent(file).path }
        let gemma2 = arch("gemma2-f32.gguf"), gemma3 = arch("gemma3-f32.gguf"), bloom = arch("bloom-f32.gguf")
        let noPostNorm = message(try rewrite("g2-post.gguf", arch: "gemma2", source: gemma2, dropTensors: ["blk.1.post_ffw_norm.weight"]))
        XCTAssertTrue(noPostNorm.contains("missing tensor 'blk.1.post_ffw_norm.weight'"), noPostNorm)
        let cap = message(try rewrite("g2-cap.gguf", arch: "gemma2", source: gemma2, setKeys: ["gemma2.attn_logit_softcapping": .float32(-1)]))
        XCTAssertTrue(cap.contains("gemma2.attn_logit_softcapping"), cap)
        let nanCap = message(try rewrite("g2-nan.gguf", arch: "gemma2", source: gemma2, setKeys: ["gemma2.final_logit_softcapping": .float32(.nan)]))
        XCTAssertTrue(nanCap.contains("gemma2.final_logit_softcapping"), nanCap)
        let window = message(try rewrite("g2-window.gguf", arch: "gemma2", source: gemma2, setKeys: ["gemma2.attention.sliding_window": .int32(-5)]))
        XCTAssertTrue(window.contains("gemma2.attention.sliding_window"), window)
        let pattern = message(try rewrite("g3-pattern.gguf", arch: "gemma3", source: gemma3,
                                          setKeys: ["gemma3.attention.sliding_window_pattern": .uint32(0)]))
        XCTAssertTrue(pattern.contains("gemma3.attention.sliding_window_pattern must be from 1 to 65536"), pattern)
        let flags = message(try rewrite("g3-flags.gguf", arch: "gemma3", source: gemma3,
                                        setKeys: ["gemma3.attention.sliding_window_pattern": .array(.bool, [.bool(true), .bool(false)])]))
        XCTAssertTrue(flags.contains("one bool per layer (6)"), flags)
        let noQKNorm = message(try rewrite("g3-qk.gguf", arch: "gemma3", source: gemma3, dropTensors: ["blk.5.attn_k_norm.weight"]))
        XCTAssertTrue(noQKNorm.contains("missing tensor 'blk.5.attn_k_norm.weight'"), noQKNorm)
        let alibi = message(try rewrite("b-alibi.gguf", arch: "bloom", source: bloom, setKeys: ["bloom.attention.max_alibi_bias": .float32(0)]))
        XCTAssertTrue(alibi.contains("bloom.attention.max_alibi_bias"), alibi)
        let noBias = message(try rewrite("b-bias.gguf", arch: "bloom", source: bloom, dropTensors: ["blk.0.attn_qkv.bias"]))
        XCTAssertTrue(noBias.contains("missing tensor 'blk.0.attn_qkv.bias'"), noBias)
        let eps = message(try rewrite("b-eps.gguf", arch: "bloom", source: bloom, setKeys: ["bloom.attention.layer_norm_epsilon": .float32(5)]))
        XCTAssertTrue(eps.contains("bloom.attention.layer_norm_epsilon"), eps)
        // A Gemma 2 file's layer tensors under the BLOOM name: BLOOM's parts are missing, Gemma's refused.
        let mixed = message(try rewrite("b-gemma.gguf", arch: "bloom", source: gemma2))
        XCTAssertTrue(mixed.contains("missing") || mixed.contains("is not part of Puna's bloom"), mixed)
        // A GGUF LoRA made for Gemma 2 on the BLOOM base is refused by architecture.
        let base = try LanguageModel(path: bloom, options: ModelOptions(threads: 1))
        XCTAssertThrowsError(try LoRAAdapter.load(path: arch("lora/gemma2-all.gguf"), for: base)) { e in
            let m = (e as! PunaError).message
            XCTAssertTrue(m.contains("gemma2") && m.contains("bloom"), m)
        }
    }

    func testRoPEFactorsMustBePositive() throws {
        let source = try GGUFFile(path: Fixtures.models.appendingPathComponent("tiny-mha-f32.gguf").path)
        let pairs = try XCTUnwrap(source.tensorInfo("blk.0.attn_q.weight")).shape[0] / 4 / 2
        // A zero factor divides an angle by zero: refused, not NaN logits.
        let m = message(try rewrite("freqs.gguf", arch: "llama", addTensors: [("rope_freqs.weight", [pairs])]))
        XCTAssertTrue(m.contains("RoPE frequency factors must be positive"), m)
    }
}
