import Foundation
import PunaCore
import XCTest

/// Hugging Face folders (save_pretrained output, scripts/fixtures/make_hf_models.py) loaded in
/// place: logits against transformers on the same checkpoint, greedy tokens, the tokenizers, a PEFT
/// adapter, and broken folders refused with the file and field named.
final class HuggingFaceFolderTests: XCTestCase {
    static let root = Fixtures.root.appendingPathComponent("hf")

    func manifest() throws -> [String: Any] { try Fixtures.json(Self.root.appendingPathComponent("manifest.json")) }
    func folders() throws -> [String: [String: Any]] { try XCTUnwrap(manifest()["folders"] as? [String: [String: Any]]) }
    func path(_ name: String) -> String { Self.root.appendingPathComponent(name).path }

    func tokens(_ folder: [String: Any]) throws -> [Int32] {
        try XCTUnwrap((folder["reference_tokens"] as? [Int]) ?? (manifest()["reference_tokens"] as? [Int])).map { Int32($0) }
    }

    /// F32, F16, BF16 (sharded) and Qwen2 BF16 and F16 folders: logits within 1e-3 of max|logit| with an f32
    /// cache (the weights are what the file holds; Puna computes in f32 like transformers' float64 run).
    func testLogitsMatchTransformersOnPlainFolders() throws {
        var checked = 0
        for (name, folder) in try folders() where folder["kind"] as? String == "plain" {
            let reference = try XCTUnwrap(folder["reference"] as? [String: Any])
            let expected = try Fixtures.floats(Self.root.appendingPathComponent(reference["logits"] as! String))
            let model = try LanguageModel(path: path(name), options: ModelOptions(threads: 2))
            let logits = try model.evaluate(try tokens(folder), cache: model.makeCache(contextLength: 64, type: .f32), allLogits: true)
            let r = maxRelativeDifference(logits, expected)
            print("\(name): \(r)")
            XCTAssertLessThanOrEqual(r, 1e-3, name)
            if let greedy = reference["greedy_tokens"] as? [Int] {
                let prompt = try XCTUnwrap((folder["prompt_tokens"] as? [Int]) ?? (manifest()["prompt_tokens"] as? [Int])).map { Int32($0) }
                XCTAssertEqual(try Fixtures.greedy(model, prompt, count: greedy.count), greedy.map { Int32($0) }, name)
            }
            checked += 1
        }
        XCTAssertGreaterThanOrEqual(checked, 5)
    }

    /// The sharded BF16 folder's tensors come from both shards, at their own offsets.
    func testShardedFolderReadsEveryShard() throws {
        let gguf = try GGUFFile(path: path("llama-bf16"))
        XCTAssertTrue(gguf.isHuggingFaceFolder)
        XCTAssertGreaterThanOrEqual(gguf.files.count, 2)
        XCTAssertEqual(Set(gguf.tensors.map { $0.source }).count, gguf.files.count)
        XCTAssertEqual(gguf.fileBytes, gguf.files.reduce(0) { $0 + $1.count })
    }

    /// tokenizer.model (SentencePiece) and tokenizer.json (byte-level BPE, Qwen2's split) give the
    /// reference tokens the fixtures were made with; the Qwen2 folder's chat template renders.
    func testTokenizersAndChatTemplate() throws {
        let m = try manifest()
        let text = try XCTUnwrap(m["reference_text"] as? String)
        let llama = try Tokenizer(gguf: GGUFFile(path: path("llama-f16")))
        XCTAssertEqual(Array(llama.encode(text, addBOS: true).prefix(16)).map(Int.init), m["reference_tokens"] as? [Int])
        let qwenFolder = try XCTUnwrap(try folders()["qwen2-bf16"])
        let qwenFile = try GGUFFile(path: path("qwen2-bf16"))
        XCTAssertEqual(qwenFile.string("tokenizer.ggml.pre"), "qwen2")
        let qwen = try Tokenizer(gguf: qwenFile)
        XCTAssertEqual(Array(qwen.encode(text, addBOS: false).prefix(16)).map(Int.init), qwenFolder["reference_tokens"] as? [Int])
        XCTAssertEqual(qwen.decode(qwen.encode(text, addBOS: false)), text)
        let messages = FileManager.default.temporaryDirectory.appendingPathComponent("hf-messages-\(UUID().uuidString).json")
        try Data("[{\"role\": \"user\", \"content\": \"Hi\"}]".utf8).write(to: messages)
        defer { try? FileManager.default.removeItem(at: messages) }
        let (status, out, err) = try Fixtures.runPuna(["template", "-m", path("qwen2-bf16"), "-i", messages.path])
        XCTAssertEqual(status, 0, err)
        XCTAssertTrue(out.contains(qwenFolder["chat_template_example"] as! String), out)
    }

    /// The PEFT adapter on the F16 folder, unmerged and merged, against PeftModel.
    func testPEFTAdapterOnAFolder() throws {
        let lora = try XCTUnwrap(try folders()["lora-llama"])
        let refs = try XCTUnwrap(lora["references"] as? [String: [String: Any]])
        let expected = try Fixtures.floats(Self.root.appendingPathComponent(try XCTUnwrap(refs["llama-f16"]?["logits"] as? String)))
        for merge in [false, true] {
            let model = try LanguageModel(path: path("llama-f16"), options: ModelOptions(threads: 2))
            let adapter = try LoRAAdapter.load(path: path("lora-llama"), for: model)
            XCTAssertEqual(adapter.targets.count, model.config.blockCount * 7)
            if merge { try model.mergeAdapters(AdapterSet([(adapter, 1)])) } else { model.activeAdapters = AdapterSet([(adapter, 1)]) }
            let logits = try model.evaluate(try tokens([:]), cache: model.makeCache(contextLength: 64, type: .f32), allLogits: true)
            let r = maxRelativeDifference(logits, expected)
            print("lora-llama on llama-f16, merged \(merge): \(r)")
            XCTAssertLessThanOrEqual(r, 1e-3, "merged: \(merge)")
        }
    }

    /// Broken folders: each refused with the file and what is wrong.
    func testBrokenFoldersAreNamed() throws {
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("puna-hf-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: tmp) }
        func copy(_ name: String) throws -> URL {
            let dest = tmp.appendingPathComponent(name + "-\(UUID().uuidString.prefix(8))")
            try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
            try FileManager.default.copyItem(at: Self.root.appendingPathComponent(name), to: dest)
            return dest
        }
        func message(_ folder: URL) -> String {
            do { _ = try LanguageModel(path: folder.path, options: ModelOptions(threads: 1)); return "loaded" } catch let e as PunaError { return e.message } catch { return "\(error)" }
        }
        func editJSON(_ file: URL, _ body: (inout [String: Any]) -> Void) throws {
            var obj = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: file)) as? [String: Any])
            body(&obj)
            try JSONSerialization.data(withJSONObject: obj).write(to: file)
        }
        // config.json: not JSON, an unknown class, a negative size.
        var d = try copy("llama-f16")
        try Data("{\"architectures\": [".utf8).write(to: d.appendingPathComponent("config.json"))
        XCTAssertTrue(message(d).contains("config.json: not valid JSON"), message(d))
        d = try copy("llama-f16")
        try editJSON(d.appendingPathComponent("config.json")) { $0["architectures"] = ["MambaForCausalLM"] }
        XCTAssertTrue(message(d).contains("'MambaForCausalLM' is not supported"), message(d))
        d = try copy("llama-f16")
        try editJSON(d.appendingPathComponent("config.json")) { $0["num_attention_heads"] = -4 }
        XCTAssertTrue(message(d).contains("num_attention_heads must be an integer"), message(d))
        d = try copy("llama-f16")
        try editJSON(d.appendingPathComponent("config.json")) { $0["num_hidden_layers"] = 1 }
        XCTAssertTrue(message(d).contains("is for layer 1, but config.json has 1 layers"), message(d))
        // The index names a shard that is missing; a tensor sits in another shard than listed.
        d = try copy("llama-bf16")
        let index = d.appendingPathComponent("model.safetensors.index.json")
        let shards = try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(contentsOf: index)) as? [String: Any])?["weight_map"] as? [String: String])
        let firstShard = try XCTUnwrap(Set(shards.values).sorted().first)
        try FileManager.default.removeItem(at: d.appendingPathComponent(firstShard))
        XCTAssertTrue(message(d).contains("names shard '\(firstShard)', which is not in the folder"), message(d))
        d = try copy("llama-bf16")
        try editJSON(d.appendingPathComponent("model.safetensors.index.json")) { obj in
            var map = obj["weight_map"] as! [String: String]
            let other = Set(map.values).sorted().last!
            map["model.embed_tokens.weight"] = map["model.embed_tokens.weight"] == other ? firstShard : other
            obj["weight_map"] = map
        }
        XCTAssertTrue(message(d).contains("'model.embed_tokens.weight' is listed in shard"), message(d))
        // A truncated shard, no tokenizer, a pickle-only folder.
        d = try copy("llama-f16")
        let weights = d.appendingPathComponent("model.safetensors")
        let bytes = try Data(contentsOf: weights)
        try bytes.prefix(bytes.count / 2).write(to: weights)
        XCTAssertTrue(message(d).contains("model.safetensors: tensor"), message(d))
        d = try copy("llama-f16")
        try FileManager.default.removeItem(at: d.appendingPathComponent("tokenizer.model"))
        try? FileManager.default.removeItem(at: d.appendingPathComponent("tokenizer.json"))
        XCTAssertTrue(message(d).contains("no tokenizer.model or tokenizer.json"), message(d))
        d = try copy("llama-f16")
        try FileManager.default.moveItem(at: d.appendingPathComponent("model.safetensors"), to: d.appendingPathComponent("pytorch_model.bin"))
        XCTAssertTrue(message(d).contains("pickle"), message(d))
        // tokenizer.model cut short, or replaced by bytes that are not a protobuf: named, not a crash.
        for cut in [7, 100, 1001, 2500] {
            d = try copy("llama-f16")
            let model = d.appendingPathComponent("tokenizer.model")
            let bytes = try Data(contentsOf: model)
            try bytes.prefix(bytes.count * cut / 10_000 + 3).write(to: model)
            let m = message(d)
            XCTAssertTrue(m.contains("tokenizer.model: ") && (m.contains("malformed protobuf") || m.contains("not a SentencePiece model")), m)
        }
        d = try copy("llama-f16")
        var garbage = [UInt8](repeating: 0, count: 4096)
        var state: UInt64 = 12345
        for i in garbage.indices { state = state &* 6364136223846793005 &+ 1442695040888963407; garbage[i] = UInt8(truncatingIfNeeded: state >> 56) }
        try Data(garbage).write(to: d.appendingPathComponent("tokenizer.model"))
        XCTAssertTrue(message(d).contains("tokenizer.model: "), message(d))
        // A directory that is not a model folder.
        try FileManager.default.createDirectory(at: tmp.appendingPathComponent("empty"), withIntermediateDirectories: true)
        XCTAssertTrue(message(tmp.appendingPathComponent("empty")).contains("without config.json"))
    }
}
