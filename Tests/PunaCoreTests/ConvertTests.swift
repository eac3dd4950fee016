import Foundation
@_spi(Testing) import PunaCore
import XCTest

/// `puna convert` against llama.cpp's own tools: every output of convert_hf_to_gguf.py (f32, f16, bf16,
/// default) and of llama-quantize on its f16 file (q8_0 … q6_k) for the Hugging Face fixtures, described
/// by sha256 in Tests/Fixtures/convert/ (scripts/fixtures/make_convert_refs.py), must come out byte for byte.
final class ConvertTests: XCTestCase {
    static let hf = Fixtures.root.appendingPathComponent("hf")
    static let refs = Fixtures.root.appendingPathComponent("convert")
    static let folders = ["llama-f16", "llama-bf16", "qwen2-bf16"]

    func temporaryPath(_ name: String) -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("puna-convert-\(getpid())")
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir.appendingPathComponent(name).path
    }

    func reference(_ folder: String) throws -> [String: Any] {
        try Fixtures.json(Self.refs.appendingPathComponent(folder + ".json"))
    }

    /// Convert `folder` to `type` ("auto": the default) into a temporary file; returns its path.
    func convert(_ folder: String, _ type: String) throws -> String {
        let out = temporaryPath("\(folder).\(type).gguf")
        let converter = try HuggingFaceConverter(folder: Self.hf.appendingPathComponent(folder).path,
                                                 type: type == "auto" ? nil : XCTUnwrap(ConvertType.named(type), type))
        _ = try converter.write(to: out)
        return out
    }

    func testEveryOutputIsByteIdenticalToLlamaCpp() throws {
        var checked = 0
        for folder in Self.folders {
            let ref = try reference(folder)
            let outputs = try XCTUnwrap(ref["outputs"] as? [String: [String: Any]])
            XCTAssertTrue(Set(outputs.keys).isSuperset(of: ["f16", "bf16", "f32", "auto", "q8_0", "q4_0", "q4_k_m"]), folder)
            for (type, expected) in outputs.sorted(by: { $0.key < $1.key }) {
                let path = try convert(folder, type)
                let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
                defer { try? FileManager.default.removeItem(atPath: path) }
                if SHA256.hex(bytes) == expected["sha256"] as? String {
                    checked += 1
                    continue
                }
                try explainDifference(folder: folder, type: type, path: path, bytes: bytes, expected: expected)
            }
        }
        XCTAssertEqual(checked, 42)
    }

    /// A failed whole-file comparison, narrowed down to keys and tensors.
    func explainDifference(folder: String, type: String, path: String, bytes: Data, expected: [String: Any]) throws {
        let what = "\(folder) as \(type)"
        XCTAssertEqual(bytes.count, expected["bytes"] as? Int, "\(what): file size")
        let file = try GGUFFile(path: path)
        let keys = try XCTUnwrap(expected["keys"] as? [[String: Any]])
        XCTAssertEqual(file.keys, keys.map { $0["key"] as! String }, "\(what): metadata keys and their order")
        let tensors = try XCTUnwrap(expected["tensors"] as? [[String: Any]])
        XCTAssertEqual(file.tensors.map { $0.name }, tensors.map { $0["name"] as! String }, "\(what): tensor order")
        for (t, e) in zip(file.tensors, tensors) {
            XCTAssertEqual(t.type.name.lowercased(), e["type"] as? String, "\(what): \(t.name) type")
            XCTAssertEqual(t.shape, e["shape"] as? [Int], "\(what): \(t.name) shape")
            let data = file.data(of: t)
            XCTAssertEqual(SHA256.hex(Data(data)), e["sha256"] as? String, "\(what): \(t.name) data")
        }
        XCTFail("\(what): the file differs from llama.cpp's (see the failures above)")
    }

    func testDefaultTypeFollowsTheSourceDtype() throws {
        // bitsandbytes folders: the quantized weights do not count, the unquantized ones (F32 / F16 here) decide.
        for (folder, expected) in [("llama-f16", "f16"), ("llama-bf16", "bf16"), ("llama-f32", "f16"), ("qwen2-bf16", "bf16"),
                                   ("llama-nf4-dq", "f16"), ("llama-int8", "f16"), ("qwen2-nf4-dq", "f16"), ("qwen2-fp4", "f16")] {
            let converter = try HuggingFaceConverter(folder: Self.hf.appendingPathComponent(folder).path, type: nil)
            XCTAssertEqual(converter.type.name, expected, folder)
        }
    }

    func testQueryKeyRowsRegroupedPerHead() {
        // 2 heads of 4 rows: halves [0 1 | 2 3] become pairs 0 2 1 3.
        XCTAssertEqual(HuggingFaceConverter.headPairOrder(rows: 8, heads: 2), [0, 2, 1, 3, 4, 6, 5, 7])
    }

    func testSHA256() {
        XCTAssertEqual(SHA256.hex(Data()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(SHA256.hex(Data("abc".utf8)), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(SHA256.hex(Data(repeating: 0x61, count: 1_000_000)),
                       "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    // MARK: hostile input

    /// A copy of llama-f16 with `edit` applied, in a temporary folder.
    func brokenFolder(_ name: String, edit: (URL) throws -> Void) throws -> String {
        let dir = URL(fileURLWithPath: temporaryPath(name))
        try? FileManager.default.removeItem(at: dir)
        try FileManager.default.copyItem(at: Self.hf.appendingPathComponent("llama-f16"), to: dir)
        try edit(dir)
        return dir.path
    }

    func expectFailure(_ arguments: [String], mentioning needles: [String], file: StaticString = #filePath, line: UInt = #line) throws {
        let (status, out, err) = try Fixtures.runPuna(["convert"] + arguments)
        XCTAssertNotEqual(status, 0, "puna convert \(arguments) succeeded: \(out)", file: file, line: line)
        XCTAssertFalse(err.contains("Fatal error") || err.contains("crashed"), err, file: file, line: line)
        for needle in needles { XCTAssertTrue(err.contains(needle), "\(arguments): '\(needle)' not in: \(err)", file: file, line: line) }
    }

    func testHostileInputIsRefusedWithAClearMessage() throws {
        let good = Self.hf.appendingPathComponent("llama-f16").path
        try expectFailure([good], mentioning: ["needs -o"])
        try expectFailure([good, "-o", temporaryPath("x.gguf"), "--type", "q3_k"], mentioning: ["--type", "q3_k", "q4_k_m"])
        try expectFailure([good, "-o", "/nonexistent-dir/out.gguf"], mentioning: ["/nonexistent-dir/out.gguf", "cannot create"])
        try expectFailure(["-o", temporaryPath("x.gguf")], mentioning: ["folder"])
        try expectFailure([Self.hf.appendingPathComponent("llama-f16/config.json").path, "-o", temporaryPath("x.gguf")], mentioning: ["not a directory"])
        let gptq = try brokenFolder("gptq") { dir in
            let config = dir.appendingPathComponent("config.json")
            var obj = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: config)) as? [String: Any])
            obj["quantization_config"] = ["quant_method": "gptq", "bits": 4]
            try JSONSerialization.data(withJSONObject: obj).write(to: config)
        }
        try expectFailure([gptq, "-o", temporaryPath("x.gguf")], mentioning: ["config.json", "quant_method 'gptq'", "not supported by puna convert", "bitsandbytes"])

        let gpt2 = try brokenFolder("gpt2") { dir in
            let config = dir.appendingPathComponent("config.json")
            let text = try String(contentsOf: config).replacingOccurrences(of: "LlamaForCausalLM", with: "GPT2LMHeadModel")
            try text.write(to: config, atomically: true, encoding: .utf8)
        }
        try expectFailure([gpt2, "-o", temporaryPath("x.gguf")], mentioning: ["GPT2LMHeadModel", "not supported", "Qwen2ForCausalLM"])

        let f64 = try brokenFolder("f64") { dir in
            // One F64 tensor: a dtype the converter path does not take.
            let header = #"{"model.embed_tokens.weight":{"dtype":"F64","shape":[2,2],"data_offsets":[0,32]}}"#
            var data = Data()
            var length = UInt64(header.utf8.count).littleEndian
            data.append(Data(bytes: &length, count: 8))
            data.append(Data(header.utf8))
            data.append(Data(count: 32))
            try data.write(to: dir.appendingPathComponent("model.safetensors"))
        }
        try expectFailure([f64, "-o", temporaryPath("x.gguf")], mentioning: ["model.embed_tokens.weight", "F64"])

        let truncated = try brokenFolder("truncated") { dir in
            let st = dir.appendingPathComponent("model.safetensors")
            let data = try Data(contentsOf: st)
            try data.prefix(data.count / 2).write(to: st)
        }
        try expectFailure([truncated, "-o", temporaryPath("x.gguf")], mentioning: ["model.safetensors"])
    }

    func testCommandWritesALoadableFile() throws {
        let out = temporaryPath("cli.gguf")
        let (status, _, err) = try Fixtures.runPuna(["convert", Self.hf.appendingPathComponent("qwen2-bf16").path, "-o", out, "--type", "Q8_0"])
        XCTAssertEqual(status, 0, err)
        XCTAssertTrue(err.contains("qwen2") && err.contains("q8_0"), err)
        let file = try GGUFFile(path: out)
        XCTAssertEqual(file["general.file_type"]?.intValue, 7)
        try? FileManager.default.removeItem(atPath: out)
        // A bitsandbytes folder: its default type, and the line saying its matrices were dequantized.
        let (s2, _, e2) = try Fixtures.runPuna(["convert", Self.hf.appendingPathComponent("llama-nf4-dq").path, "-o", out])
        XCTAssertEqual(s2, 0, e2)
        XCTAssertTrue(e2.contains("14 bnb-nf4-dq matrices dequantized") && e2.contains("as f16"), e2)
        XCTAssertEqual(try GGUFFile(path: out)["general.file_type"]?.intValue, 1)
        try? FileManager.default.removeItem(atPath: out)
    }

    // MARK: README.md model cards

    /// A README.md model card: llama-card is llama-f16 with Tests/Fixtures/convert/llama-card.README.md as its README.md,
    /// assembled under that name as make_convert_refs.py assembles it. Its f16 and q8_0 files are byte-identical to
    /// llama.cpp's: the general.* keys from the YAML front matter (author, version, description, license, its name and
    /// link, three base models — a Hub id, a Hub URL, a mapping —, two datasets, tags with pipeline_tag, languages with
    /// the unquoted Norwegian `- no`) in gguf-py's order, around the name and size label from the folder.
    func testModelCardKeysAreLlamaCpps() throws {
        let ref = try reference("llama-card")
        let outputs = try XCTUnwrap(ref["outputs"] as? [String: [String: Any]])
        XCTAssertEqual(Set(outputs.keys), ["f16", "q8_0"])
        let parent = URL(fileURLWithPath: temporaryPath("card-\(UUID().uuidString.prefix(8))"))
        let folder = parent.appendingPathComponent("llama-card")
        try FileManager.default.createDirectory(at: parent, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: parent) }
        try FileManager.default.copyItem(at: Self.hf.appendingPathComponent("llama-f16"), to: folder)
        try FileManager.default.copyItem(at: Self.refs.appendingPathComponent("llama-card.README.md"), to: folder.appendingPathComponent("README.md"))
        for (type, expected) in outputs.sorted(by: { $0.key < $1.key }) {
            let out = temporaryPath("llama-card.\(type).gguf")
            let converter = try HuggingFaceConverter(folder: folder.path, type: XCTUnwrap(ConvertType.named(type)))
            XCTAssertEqual(converter.modelCardSkipped, [])
            _ = try converter.write(to: out)
            defer { try? FileManager.default.removeItem(atPath: out) }
            let bytes = try Data(contentsOf: URL(fileURLWithPath: out))
            if SHA256.hex(bytes) != expected["sha256"] as? String {
                try explainDifference(folder: "llama-card", type: type, path: out, bytes: bytes, expected: expected)
            }
            let file = try GGUFFile(path: out)
            XCTAssertEqual(file.string("general.license"), "apache-2.0")
            XCTAssertEqual(file.stringArray("general.languages"), ["en", "no", "fr"])
            XCTAssertEqual(file.int("general.base_model.count"), 3)
            XCTAssertEqual(file.string("general.base_model.1.repo_url"), "https://huggingface.co/mistralai/Mistral-7B-v0.1")
            XCTAssertEqual(file.string("general.description"), "A tiny model \"card\" \u{2014} its front matter exercises the model-card keys.")
        }
    }

    /// The YAML model cards are written in, as far as ModelCard reads it, and what the metadata makes of it.
    func testModelCardFrontMatter() throws {
        func card(_ text: String) -> ModelCard { ModelCard(markdown: Array(text.utf8)) }
        func metadata(_ text: String) -> ModelCardMetadata { ModelCardMetadata(card: card(text), parameters: 7_000_000_000) }
        // No front matter: not on the first line, or none at all.
        XCTAssertTrue(card("# Title\n---\nlicense: mit\n---\n").entries.isEmpty)
        XCTAssertTrue(card("").entries.isEmpty)
        // Scalars: plain with a comment, quoted with escapes, '' in single quotes, null; CRLF lines.
        let c = card("---\r\nlicense: mit # a comment\r\nlicense_name: 'it''s'\r\nlicense_link: \"a\\tb\\u00e9\"\r\nauthor:\r\n---\r\n")
        XCTAssertEqual(c["license"]?.string, "mit")
        XCTAssertEqual(c["license_name"]?.string, "it's")
        XCTAssertEqual(c["license_link"]?.string, "a\tb\u{e9}")
        if case .null? = c["author"] {} else { XCTFail("author: \(String(describing: c["author"]))") }
        // Lists: flow, block at the key's indent or deeper, mapping items; a repeated key: the last one.
        let l = card("---\ntags: [a, 'b, c', \"d\"]\nlanguage:\n- en\n- no\nlanguage:\n  - de\n  - fr # French\nbase_model:\n  - name: X\n    repo_url: u\n  - org/Model-7B\n---\n")
        XCTAssertEqual(metadata("---\ntags: [a, 'b, c', \"d\"]\npipeline_tag: text-generation\n---").tags, ["a", "b, c", "d", "text-generation"])
        if case .list(let items)? = l["language"] { XCTAssertEqual(items.map { $0.string }, ["de", "fr"]) } else { XCTFail("language") }
        XCTAssertEqual(metadata("---\nlanguage:\n- en\n- no\n---").languages, ["en", "no"], "- no is quoted first, as gguf-py does")
        let bases = ModelCardMetadata(card: l, parameters: 7_000_000_000).baseModels ?? []
        XCTAssertEqual(bases.count, 2)
        XCTAssertEqual(bases.first?.map { $0.key }, ["name", "repo_url"])
        XCTAssertEqual(bases.last?.first { $0.key == "repo_url" }?.value, "https://huggingface.co/org/Model-7B")
        // Not text where text is wanted: numbers, booleans, dates; unsupported forms: block scalars, nested mappings.
        let odd = metadata("---\nversion: 1.0\nauthor: yes\nname: 2024-01-01\ndescription: |\n  multi\n  line\nlicense:\n  name: x\nlicense_link: ok\n---")
        XCTAssertEqual(odd.version, "")
        XCTAssertEqual(odd.author, "")
        XCTAssertEqual(odd.name, "")
        XCTAssertNil(odd.description)
        XCTAssertNil(odd.license)
        XCTAssertEqual(odd.licenseLink, "ok")
        XCTAssertEqual(Set(odd.skipped), ["version", "author", "name", "description", "license"])
        let keys = odd.keysAfterSizeLabel().map { $0.0 }
        XCTAssertEqual(keys, ["general.license.link"], "empty and unread values are not written")
        // Unused keys are not parsed, whatever their YAML; a document that is not a mapping is ignored.
        XCTAssertEqual(metadata("---\nwidget:\n  - text: |\n      anything: [\nlicense: mit\n---").license, "mit")
        XCTAssertTrue(card("---\n- a\n- b\n---").entries.isEmpty)
        XCTAssertTrue(card("---\nlicense: mit\nnot a key\n---").entries.isEmpty)
        XCTAssertEqual(card("---\nlicense: mit\nnot a key\n---").skipped.first?.hasPrefix("the whole front matter"), true)
        // A list of licenses joined by commas; base_model present but null: a count of 0.
        XCTAssertEqual(metadata("---\nlicense: [mit, apache-2.0]\n---").license, "mit,apache-2.0")
        let none = metadata("---\nbase_model:\n---")
        XCTAssertEqual(none.baseModels?.count, 0)
        XCTAssertEqual(none.keysAfterSizeLabel().map { $0.0 }, ["general.base_model.count"])
        // Values going on over several lines: a plain scalar folded (a break is a space, an empty line a newline), a flow list.
        XCTAssertEqual(metadata("---\ndescription: first line\n  second line\n\n  after an empty line\n\nlicense: mit\n---").description,
                       "first line second line\nafter an empty line")
        XCTAssertEqual(metadata("---\ntags: [ a ,\n   \"b c\" ,\n   d, ]\n---").tags, ["a", "b c", "d"])
        XCTAssertNil(metadata("---\ndescription: one\n  # a comment\n  two\n---").description)
        // Plain scalars YAML 1.1 (PyYAML's resolver) reads as numbers or dates, and the ones it leaves as text.
        let notText = ["1", "012", "0", "-0", "+12", "1_000", "0b101", "0x1F", "1:20", "1:2:3", "190:20:30", "1.0", "1.", ".5",
                       "1.0e+5", "1_2.3_4", ".inf", "-.Inf", "+.INF", ".nan", ".NaN", "1:30.5", "2024-01-01", "2024-01-01T10:20:30",
                       "2024-01-01 10:20:30.5 +01:00", "2024-01-01t1:20:30Z", "1__", "yes", "Off", "TRUE"]
        let text = ["08", "0b", "0x", "12:99", "0:30", "+.5", "-.5", "1e5", "1.0e5", "1.2.3", "-.nan", "2024-1-1", "1234-5678",
                    "2024-01-01 10:20", "v1.2", "1.2b", "7B", "12-34", "+", ".", "_1", "0o17", "3e-2", "yess", "nO"]
        for v in notText { XCTAssertEqual(metadata("---\nlicense_name: \(v)\n---").licenseName, "", v) }
        for v in text { XCTAssertEqual(metadata("---\nlicense_name: \(v)\n---").licenseName, v, v) }
        // Hostile text: unterminated quotes and lists, stray indicators, bytes that are not UTF-8: read or skipped, no trap.
        for text in ["---\nlicense: \"open\n---", "---\ntags: [a, b\n---", "---\nlicense: &anchor mit\n---", "---\nlicense: \"\\uD800\"\n---",
                     "---\n\u{1}: x\n---", "---\n: x\n---", "---\nlicense: '\n---", "---\ntags:\n - a\n  - b\n---"] {
            _ = metadata(text).keysAfterSizeLabel()
        }
        _ = ModelCardMetadata(card: ModelCard(markdown: [45, 45, 45, 10] + [UInt8](repeating: 0xFF, count: 64) + [58, 32, 0xC3]), parameters: 1)
    }

    // MARK: bitsandbytes sources: dequantized as bitsandbytes does, then encoded in the requested type

    /// The bnb folders of scripts/fixtures/make_hf_models.py (LLaMA with tokenizer.model, Qwen2 with a byte-level
    /// BPE tokenizer.json) and the float folder holding the same model.
    static let bnbFolders: [(folder: String, plain: String)] = [
        ("llama-nf4-dq", "llama-f16"), ("llama-fp4", "llama-f16"), ("llama-int8", "llama-f16"),
        ("qwen2-nf4-dq", "qwen2-f16"), ("qwen2-fp4", "qwen2-f16"), ("qwen2-int8", "qwen2-f16"),
    ]

    func hfFolders() throws -> [String: [String: Any]] {
        try XCTUnwrap(Fixtures.json(Self.hf.appendingPathComponent("manifest.json"))["folders"] as? [String: [String: Any]])
    }

    /// max |got - want| / max |want|.
    /// `--type f32` writes bitsandbytes' own dequantization bit for bit: layer 0's q_proj against the dump of
    /// bitsandbytes.functional.dequantize_4bit / int8_vectorwise_dequant's output (.q_proj.dequant.bin) for the three
    /// LLaMA folders (LLaMA's Q rows regrouped per head by the converter: undone here) and qwen2-nf4-dq, whose
    /// quant_state dtype float16 makes bitsandbytes round its result to f16; an unquantized matrix (the embedding,
    /// F32 or F16 in the folders) keeps its stored values.
    func testBitsAndBytesAsF32IsBitsandbytesDequantization() throws {
        let folders = try hfFolders()
        for folder in ["llama-nf4-dq", "llama-fp4", "llama-int8", "qwen2-nf4-dq"] {
            let entry = try XCTUnwrap(folders[folder]?["q_proj_dequant"] as? [String: Any], folder)
            let shape = try XCTUnwrap(entry["shape"] as? [Int])   // [rows, cols]
            let dump = try Fixtures.floats(Self.hf.appendingPathComponent(try XCTUnwrap(entry["file"] as? String)))
            XCTAssertEqual(dump.count, shape[0] * shape[1])
            let config = try Fixtures.json(Self.hf.appendingPathComponent(folder + "/config.json"))
            let heads = try XCTUnwrap(config["num_attention_heads"] as? Int)
            let regrouped = folder.hasPrefix("llama")
            let path = try convert(folder, "f32")
            defer { try? FileManager.default.removeItem(atPath: path) }
            let file = try GGUFFile(path: path)
            let q = try XCTUnwrap(file.tensorInfo("blk.0.attn_q.weight"))
            XCTAssertEqual(q.type, .f32, folder)
            XCTAssertEqual(q.shape, [shape[1], shape[0]], folder)
            let data = file.data(of: q)
            let order = regrouped ? HuggingFaceConverter.headPairOrder(rows: shape[0], heads: heads) : Array(0..<shape[0])
            var differing = 0, differingInHuggingFaceOrder = 0
            for r in 0..<shape[0] {
                for c in 0..<shape[1] {
                    let got = data.loadUnaligned(fromByteOffset: 4 * (r * shape[1] + c), as: UInt32.self)
                    if got != dump[order[r] * shape[1] + c].bitPattern { differing += 1 }
                    if got != dump[r * shape[1] + c].bitPattern { differingInHuggingFaceOrder += 1 }
                }
            }
            XCTAssertEqual(differing, 0, "\(folder): attn_q values that are not bitsandbytes' dequantization")
            if regrouped { XCTAssertGreaterThan(differingInHuggingFaceOrder, 0, "\(folder): the Q rows must be regrouped per head") }
            // The embedding as stored (bitsandbytes leaves it unquantized) comes out as its own values.
            let folderFile = try GGUFFile(path: Self.hf.appendingPathComponent(folder).path)
            let embedding = try XCTUnwrap(folderFile.tensorInfo("token_embd.weight"))
            XCTAssertFalse(embedding.type.isBitsAndBytes)
            let stored = try embedding.type.decode(folderFile.data(of: embedding), count: embedding.elementCount)
            let out = try XCTUnwrap(file.tensorInfo("token_embd.weight"))
            XCTAssertEqual(out.type, .f32)
            let written = file.data(of: out)
            XCTAssertEqual(written.count, 4 * stored.count)
            XCTAssertTrue((0..<stored.count).allSatisfy { written.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self) == stored[$0].bitPattern },
                          "\(folder): token_embd.weight is not the folder's embedding")
        }
    }

    /// An F32 GGUF holding exactly the weights of `path` (each tensor decoded), for a float computation on a
    /// quantized file's own weights.
    func f32Copy(of path: String) throws -> String {
        let file = try GGUFFile(path: path)
        var writer = GGUFWriter()
        for key in file.keys { writer.set(key, try XCTUnwrap(file[key])) }
        for t in file.tensors {
            let values = try t.type.decode(file.data(of: t), count: t.elementCount)
            var bytes = [UInt8]()
            bytes.reserveCapacity(4 * values.count)
            for v in values { withUnsafeBytes(of: v.bitPattern.littleEndian) { bytes.append(contentsOf: $0) } }
            writer.addTensor(name: t.name, shape: t.shape, type: .f32, bytes: bytes)
        }
        let out = path + ".f32-copy.gguf"
        try writer.write(to: out)
        return out
    }

    /// Each bnb folder converted to f32, f16, q8_0 and q4_0 loads in Puna as plain GGUF tensors, and:
    /// - f32, f16, q8_0: its logits are within the project's tolerance of transformers' on that bnb checkpoint
    ///   (float64 on bitsandbytes' dequantized weights; F32 1e-3, F16 2e-3, 8-bit 6e-2 of max|logit|, f32 cache);
    /// - q8_0, q4_0: every Q8_0/Q4_0 matrix holds the f32 file's values to within its blocks' rounding (the step
    ///   being the block's max|x|/127 or /8), and Puna's logits are within
    ///   the 8-bit 6e-2 / 4-bit 8e-2 tolerance of a float computation on the file's own weights. A second 4-bit
    ///   quantization is a different model: q4_0 against transformers on the bnb checkpoint is printed, not bounded
    ///   (as is the F16 folder's own q4_0 conversion against its reference, for scale).
    func testBitsAndBytesConversionsMatchTransformers() throws {
        let folders = try hfFolders()
        let llamaTokens = try XCTUnwrap(Fixtures.json(Self.hf.appendingPathComponent("manifest.json"))["reference_tokens"] as? [Int])
        func logits(_ path: String, _ tokens: [Int32]) throws -> [Float] {
            let model = try LanguageModel(path: path, options: ModelOptions(threads: 2))
            XCTAssertFalse(model.gguf.isHuggingFaceFolder || model.gguf.tensors.contains { $0.type.isBitsAndBytes }, path)
            return try model.evaluate(tokens, cache: model.makeCache(contextLength: 64, type: .f32), allLogits: true)
        }
        var plainQ4: [String: Float] = [:]
        for plain in ["llama-f16", "qwen2-f16"] {
            let entry = try XCTUnwrap(folders[plain])
            let tokens = ((entry["reference_tokens"] as? [Int]) ?? llamaTokens).map { Int32($0) }
            let reference = try XCTUnwrap(entry["reference"] as? [String: Any])
            let expected = try Fixtures.floats(Self.hf.appendingPathComponent(try XCTUnwrap(reference["logits"] as? String)))
            let path = try convert(plain, "q4_0")
            defer { try? FileManager.default.removeItem(atPath: path) }
            plainQ4[plain] = maxRelativeDifference(try logits(path, tokens), expected)
        }
        for (folder, plain) in Self.bnbFolders {
            let entry = try XCTUnwrap(folders[folder], folder)
            let tokens = ((entry["reference_tokens"] as? [Int]) ?? llamaTokens).map { Int32($0) }
            let reference = try XCTUnwrap(entry["reference"] as? [String: Any])
            let expected = try Fixtures.floats(Self.hf.appendingPathComponent(try XCTUnwrap(reference["logits"] as? String)))
            let f32Path = try convert(folder, "f32")
            defer { try? FileManager.default.removeItem(atPath: f32Path) }
            let f32File = try GGUFFile(path: f32Path)
            var line = "convert \(folder) vs transformers on the bnb checkpoint:"
            var ownLine = "; vs a float run on the file's own weights:"
            for (type, bound) in [("f32", Float(1e-3)), ("f16", 2e-3), ("q8_0", 6e-2), ("q4_0", 8e-2)] {
                let path = type == "f32" ? f32Path : try convert(folder, type)
                defer { if type != "f32" { try? FileManager.default.removeItem(atPath: path) } }
                let got = try logits(path, tokens)
                let r = maxRelativeDifference(got, expected)
                line += " \(type) \(r)"
                if type != "q4_0" { XCTAssertLessThanOrEqual(r, bound, "\(folder) as \(type) vs transformers") }
                guard type == "q8_0" || type == "q4_0" else { continue }
                // The quantized matrices against the f32 file's values, block by block.
                let file = try GGUFFile(path: path)
                let quantized = file.tensors.filter { $0.type == .q8_0 || $0.type == .q4_0 }
                XCTAssertGreaterThanOrEqual(quantized.count, 14, "\(folder) \(type)")
                for t in quantized {
                    let source = try XCTUnwrap(f32File.tensorInfo(t.name))
                    // The converter quantizes its f16 values.
                    let half = try GGMLType.f16.encode(try source.type.decode(f32File.data(of: source), count: source.elementCount))
                    let exact = try half.withUnsafeBytes { try GGMLType.f16.decode($0, count: source.elementCount) }
                    let decoded = try t.type.decode(file.data(of: t), count: t.elementCount)
                    let levels: Float = t.type == .q8_0 ? 127 : 8
                    var worst: Float = 0
                    for block in stride(from: 0, to: exact.count, by: 32) {
                        let amax = exact[block..<(block + 32)].reduce(0) { max($0, abs($1)) }
                        let step = amax / levels
                        for i in block..<(block + 32) { worst = max(worst, abs(decoded[i] - exact[i]) / max(step, .leastNormalMagnitude)) }
                    }
                    // Q8_0: half a step, plus the f16 scale's rounding over up to 127 steps. Q4_0: its 16 levels reach
                    // -8…+7 steps, so a value of the sign opposite to the block's extreme can be a whole step off.
                    XCTAssertLessThanOrEqual(worst, t.type == .q8_0 ? 0.57 : 1.01, "\(folder) \(type) \(t.name): off by \(worst) steps")
                }
                let copy = try f32Copy(of: path)
                defer { try? FileManager.default.removeItem(atPath: copy) }
                let own = maxRelativeDifference(got, try logits(copy, tokens))
                ownLine += " \(type) \(own)"
                XCTAssertLessThanOrEqual(own, bound, "\(folder) as \(type) vs a float run on its own weights")
            }
            print(line + ownLine + " (\(plain) as q4_0 vs its transformers reference: \(plainQ4[plain] ?? .nan))")
        }
    }

    /// The companions (absmax, quant_map, nested_*, quant_state, SCB, weight_format) do not appear: a bnb folder's
    /// conversion lists the tensors of the float folder's conversion (count, names, order, shapes, types, for f16
    /// and q4_k_m), and every key but the general.* naming (made from the folder's name) is the same, value included.
    func testBitsAndBytesConversionHasTheFloatFoldersTensors() throws {
        let companions = ["absmax", "quant_map", "nested", "quant_state", "SCB", "weight_format"]
        for (folder, plain) in Self.bnbFolders {
            for type in ["f16", "q4_k_m"] {
                let a = try convert(folder, type), b = try convert(plain, type)
                defer { try? FileManager.default.removeItem(atPath: a); try? FileManager.default.removeItem(atPath: b) }
                let got = try GGUFFile(path: a), want = try GGUFFile(path: b)
                let what = "\(folder) vs \(plain) as \(type)"
                XCTAssertEqual(got.tensors.count, want.tensors.count, what)
                XCTAssertEqual(got.tensors.map { $0.name }, want.tensors.map { $0.name }, what)
                XCTAssertEqual(got.tensors.map { $0.shape }, want.tensors.map { $0.shape }, what)
                XCTAssertEqual(got.tensors.map { $0.type.name }, want.tensors.map { $0.type.name }, what)
                for t in got.tensors {
                    XCTAssertFalse(companions.contains { t.name.contains($0) }, "\(what): \(t.name)")
                }
                let keys = got.keys.filter { !$0.hasPrefix("general.") || $0 == "general.file_type" || $0 == "general.architecture" }
                XCTAssertEqual(keys, want.keys.filter { !$0.hasPrefix("general.") || $0 == "general.file_type" || $0 == "general.architecture" }, what)
                for key in keys {
                    XCTAssertEqual(got[key].map { String(describing: $0) }, want[key].map { String(describing: $0) }, "\(what): \(key)")
                }
            }
        }
    }

    /// A bnb folder in two shards (its tensors dealt alternately, so weights and their companions are split between
    /// the shards) converts to what the single-file folder converts to (same folder name, so same general.name): the
    /// same tensors, bytes and keys; as f32 in the shards' order (the converter's), as q4_k_m the very same file.
    func testShardedBitsAndBytesFolderConvertsTheSame() throws {
        typealias Safetensors = BitsAndBytesFolderTests.Safetensors
        let parent = URL(fileURLWithPath: temporaryPath("sharded-\(UUID().uuidString.prefix(8))"))
        let folder = parent.appendingPathComponent("llama-nf4-dq")
        try FileManager.default.createDirectory(at: parent, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: parent) }
        try FileManager.default.copyItem(at: Self.hf.appendingPathComponent("llama-nf4-dq"), to: folder)
        let single = folder.appendingPathComponent("model.safetensors")
        let whole = try Safetensors(single)
        var shards = [whole, whole]
        shards[0].entries = whole.entries.enumerated().filter { $0.offset % 2 == 0 }.map { $0.element }
        shards[1].entries = whole.entries.enumerated().filter { $0.offset % 2 == 1 }.map { $0.element }
        var map: [String: String] = [:]
        for (i, shard) in shards.enumerated() {
            let name = "model-0000\(i + 1)-of-00002.safetensors"
            try shard.write(folder.appendingPathComponent(name))
            for e in shard.entries { map[e.name] = name }
        }
        let q = "model.layers.0.self_attn.q_proj.weight"
        XCTAssertNotNil(map[q])
        XCTAssertNotEqual(map[q], map[q + ".absmax"], "a weight and its absmax are in different shards")
        try JSONSerialization.data(withJSONObject: ["metadata": [:], "weight_map": map]).write(to: folder.appendingPathComponent("model.safetensors.index.json"))
        try FileManager.default.removeItem(at: single)
        for type in ["f32", "q4_k_m"] {
            let out = temporaryPath("sharded.\(type).gguf")
            _ = try HuggingFaceConverter(folder: folder.path, type: XCTUnwrap(ConvertType.named(type))).write(to: out)
            defer { try? FileManager.default.removeItem(atPath: out) }
            let reference = try convert("llama-nf4-dq", type)
            defer { try? FileManager.default.removeItem(atPath: reference) }
            if type == "q4_k_m" {
                XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: out)), try Data(contentsOf: URL(fileURLWithPath: reference)), type)
                continue
            }
            let got = try GGUFFile(path: out), want = try GGUFFile(path: reference)
            XCTAssertEqual(got.keys, want.keys)
            XCTAssertNotEqual(got.tensors.map { $0.name }, want.tensors.map { $0.name }, "the shards' order")
            XCTAssertEqual(got.tensors.map { $0.name }.sorted(), want.tensors.map { $0.name }.sorted())
            for t in got.tensors {
                let w = try XCTUnwrap(want.tensorInfo(t.name))
                XCTAssertEqual(Data(got.data(of: t)), Data(want.data(of: w)), t.name)
            }
        }
    }

    /// Hostile bnb folders fail in `puna convert` as they fail in `-m`: the file and tensor named, no crash, no output.
    func testHostileBitsAndBytesFoldersAreRefusedByConvert() throws {
        typealias Safetensors = BitsAndBytesFolderTests.Safetensors
        func broken(_ source: String, _ name: String, config: ((inout [String: Any]) -> Void)? = nil,
                    _ change: (inout Safetensors) throws -> Void = { _ in }) throws -> String {
            let dir = URL(fileURLWithPath: temporaryPath("bnb-" + name))
            try? FileManager.default.removeItem(at: dir)
            try FileManager.default.copyItem(at: Self.hf.appendingPathComponent(source), to: dir)
            let weights = dir.appendingPathComponent("model.safetensors")
            var st = try Safetensors(weights)
            try change(&st)
            try st.write(weights)
            if let config {
                let file = dir.appendingPathComponent("config.json")
                var obj = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: file)) as? [String: Any])
                config(&obj)
                try JSONSerialization.data(withJSONObject: obj).write(to: file)
            }
            return dir.path
        }
        func refused(_ folder: String, _ needles: [String], line: UInt = #line) throws {
            let out = temporaryPath("hostile-bnb.gguf")
            try? FileManager.default.removeItem(atPath: out)
            try expectFailure([folder, "-o", out], mentioning: needles, line: line)
            XCTAssertFalse(FileManager.default.fileExists(atPath: out), "\(folder): an output file was left", line: line)
            try? FileManager.default.removeItem(atPath: folder)
        }
        let q = "model.layers.0.self_attn.q_proj.weight"
        let state = q + ".quant_state.bitsandbytes__nf4"
        // The editor's round trip converts: it breaks nothing by itself.
        let same = try broken("llama-nf4-dq", "same")
        XCTAssertEqual(try HuggingFaceConverter(folder: same, type: nil).dequantizedCount, 14)
        try? FileManager.default.removeItem(atPath: same)
        try refused(try broken("llama-nf4-dq", "no-state") { $0.remove(state) }, ["model.safetensors", q, "missing its companion tensor '\(state)'"])
        try refused(try broken("llama-nf4-dq", "bad-state") { st in st.edit(state) { $0.bytes = Data("{\"shape\": [256,".utf8); $0.shape = [$0.bytes.count] } },
                    ["model.safetensors", state, "not valid JSON"])
        try refused(try broken("llama-nf4-dq", "absmax") { st in st.edit(q + ".absmax") { $0.bytes = $0.bytes.prefix(1000); $0.shape = [1000] } },
                    ["model.safetensors", "\(q).absmax' must be 1024 U8 codes", "found 1000 U8"])
        try refused(try broken("llama-nf4-dq", "packed") { st in st.edit(q) { $0.bytes = $0.bytes.prefix(32767); $0.shape = [32767, 1] } },
                    [q, "holds 32767 bytes, but a 256×256 4-bit weight packs into 32768"])
        try refused(try broken("llama-nf4-dq", "orphan") { $0.remove(q) }, ["model.safetensors", "belongs to no nf4-quantized weight"])
        try refused(try broken("llama-nf4-dq", "dq-flag", config: { c in
            var qc = c["quantization_config"] as! [String: Any]; qc["bnb_4bit_use_double_quant"] = false; c["quantization_config"] = qc
        }), ["model.safetensors", "bnb_4bit_use_double_quant false", "nested_absmax/nested_quant_map tensors are there"])
        try refused(try broken("llama-nf4-dq", "both", config: { c in
            var qc = c["quantization_config"] as! [String: Any]; qc["load_in_8bit"] = true; c["quantization_config"] = qc
        }), ["config.json", "exactly one of load_in_4bit and load_in_8bit"])
        let q8 = "model.layers.0.self_attn.q_proj"
        try refused(try broken("llama-int8", "scb") { $0.remove(q8 + ".SCB") }, [q8 + ".weight", "missing its row scales '\(q8).SCB'"])
        try refused(try broken("llama-int8", "format") { st in st.edit(q8 + ".weight_format") { $0.bytes = Data([1]) } },
                    ["weight_format' is not 0 (row-major)"])
        try refused(try broken("llama-int8", "dtype") { st in st.edit(q8 + ".weight") { $0.dtype = "U8" } }, [q8 + ".weight", "dtype U8", "I8 [rows, cols]"])
    }

    /// With PUNA_LLAMA_BIN: llama.cpp loads and runs every type made from each bnb folder. On f32 and f16 files its
    /// 16 greedy tokens are Puna's on the same file; on quantized files the two runtimes round activations
    /// differently and these tiny models have near ties (qwen2-int8 as q4_k_m: three tokens within 0.2 of 7.7 at
    /// the first step), so there llama.cpp's first token must be one of Puna's three best.
    func testLlamaCppRunsBitsAndBytesConversions() throws {
        guard let bin = ProcessInfo.processInfo.environment["PUNA_LLAMA_BIN"] else {
            throw XCTSkip("set PUNA_LLAMA_BIN to llama.cpp's bin folder (with llama-completion) to run this check")
        }
        let prompt = "You may convey"
        let count = 16
        for (folder, _) in Self.bnbFolders {
            for type in ["f32", "f16", "q8_0", "q4_0", "q4_k_m"] {
                let path = try convert(folder, type)
                defer { try? FileManager.default.removeItem(atPath: path) }
                let model = try LanguageModel(path: path, options: ModelOptions(threads: 1))
                let promptIDs = model.tokenizer.encode(prompt)
                let tokens = try Fixtures.greedy(model, promptIDs, count: count)
                let (status, printed) = try runLlamaCompletion(bin: bin, model: path, prompt: prompt, count: count)
                XCTAssertEqual(status, 0, "\(folder) \(type): llama-completion failed to load or run the file")
                let agreed = agreement(model, tokens, printed)
                print("convert \(folder) \(type): llama.cpp agrees on \(agreed)/\(count) greedy tokens")
                if type == "f32" || type == "f16" {
                    XCTAssertEqual(agreed, count, "\(folder) \(type): llama.cpp printed \(printed)")
                } else {
                    let first = try model.evaluate(promptIDs, cache: model.makeCache(contextLength: 64, type: .f32))
                    let best = (0..<first.count).sorted { first[$0] > first[$1] }.prefix(3)
                    XCTAssertTrue(best.contains { printed.starts(with: model.tokenizer.pieceBytes(Int32($0))) },
                                  "\(folder) \(type): llama.cpp's first token is none of Puna's best three \(Array(best)); it printed \(printed)")
                }
            }
        }
    }

    // MARK: llama.cpp runs the files

    /// With PUNA_LLAMA_BIN (a folder holding llama-completion, e.g. /work/cache/llama-build/bin): llama.cpp
    /// loads every converted type and its greedy text matches Puna's greedy tokens on the same file, and for
    /// the float types Puna's on the Hugging Face folder itself.
    func testLlamaCppRunsConvertedFiles() throws {
        guard let bin = ProcessInfo.processInfo.environment["PUNA_LLAMA_BIN"] else {
            throw XCTSkip("set PUNA_LLAMA_BIN to llama.cpp's bin folder (with llama-completion) to run this check")
        }
        let prompt = "You may convey"
        let count = 16
        for folder in Self.folders {
            let hfModel = try LanguageModel(path: Self.hf.appendingPathComponent(folder).path, options: ModelOptions(threads: 1))
            let promptIDs = hfModel.tokenizer.encode(prompt)
            let hfTokens = try Fixtures.greedy(hfModel, promptIDs, count: count)
            for type in ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_m"] {
                let path = try convert(folder, type)
                defer { try? FileManager.default.removeItem(atPath: path) }
                let model = try LanguageModel(path: path, options: ModelOptions(threads: 1))
                XCTAssertEqual(model.tokenizer.encode(prompt), promptIDs, "\(folder) \(type): prompt tokens")
                let tokens = try Fixtures.greedy(model, promptIDs, count: count)
                let (status, printed) = try runLlamaCompletion(bin: bin, model: path, prompt: prompt, count: count)
                XCTAssertEqual(status, 0, "\(folder) \(type): llama-completion failed to load or run the file")
                let agreed = agreement(model, tokens, printed)
                let floatType = ["f32", "f16", "bf16"].contains(type)
                print("convert \(folder) \(type): llama.cpp agrees on \(agreed)/\(count) greedy tokens; Puna on the GGUF vs on the folder: \(tokens == hfTokens ? "same" : "different")")
                // The files are llama.cpp's own bytes (testEveryOutputIsByteIdenticalToLlamaCpp); on quantized files the
                // two runtimes round activations differently, and the tiny models' top-2 margins are small (~0.015), so
                // only the first tokens must agree there.
                XCTAssertGreaterThanOrEqual(agreed, floatType ? count : 4, "\(folder) \(type): llama.cpp printed \(printed)")
                if floatType { XCTAssertEqual(tokens, hfTokens, "\(folder) \(type): Puna on the GGUF vs on the Hugging Face folder") }
            }
        }
    }
}

extension ConvertTests {
    /// llama.cpp's greedy continuation of `prompt` on `model`: (exit status, printed bytes). llama-completion ends a
    /// complete output with "\n\n"; it now and then prints nothing, so retry (as scripts/fixtures/make_arch_models.py does).
    func runLlamaCompletion(bin: String, model path: String, prompt: String, count: Int) throws -> (Int32, [UInt8]) {
        let completion = URL(fileURLWithPath: bin).appendingPathComponent("llama-completion")
        var printed: [UInt8] = [], status: Int32 = -1
        for _ in 0..<10 {
            let p = Process()
            p.executableURL = completion
            p.arguments = ["-m", path, "-p", prompt, "-n", "\(count)", "--temp", "0", "--ignore-eos", "-no-cnv",
                           "--no-display-prompt", "--no-warmup", "-t", "1", "--seed", "1", "-c", "256"]
            var env = ProcessInfo.processInfo.environment
            env["LD_LIBRARY_PATH"] = bin + (env["LD_LIBRARY_PATH"].map { ":" + $0 } ?? "")
            p.environment = env
            let pipe = Pipe()
            p.standardOutput = pipe
            p.standardError = FileHandle.nullDevice
            p.standardInput = FileHandle.nullDevice
            try p.run()
            printed = [UInt8](pipe.fileHandleForReading.readDataToEndOfFile())
            p.waitUntilExit()
            status = p.terminationStatus
            if status != 0 || printed.suffix(2) == [10, 10] { break }
        }
        return (status, printed)
    }

    /// How many of Puna's `tokens` llama.cpp printed, compared on the bytes of their pieces.
    func agreement(_ model: LanguageModel, _ tokens: [Int32], _ printed: [UInt8]) -> Int {
        var agreed = 0, expected: [UInt8] = []
        for t in tokens {
            expected += model.tokenizer.pieceBytes(t)
            guard printed.starts(with: expected) else { break }
            agreed += 1
        }
        return agreed
    }
}

/// SHA-256 (FIPS 180-4), for comparing outputs with the references' hashes.
enum SHA256 {
    static let k: [UInt32] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    ]

    static func digest(_ data: Data) -> [UInt8] {
        var h: [UInt32] = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]
        var message = [UInt8](data)
        let bitLength = UInt64(message.count) * 8
        message.append(0x80)
        while message.count % 64 != 56 { message.append(0) }
        for i in (0..<8).reversed() { message.append(UInt8(truncatingIfNeeded: bitLength >> (8 * UInt64(i)))) }
        func rotr(_ x: UInt32, _ n: UInt32) -> UInt32 { (x >> n) | (x << (32 - n)) }
        var w = [UInt32](repeating: 0, count: 64)
        for chunk in stride(from: 0, to: message.count, by: 64) {
            for i in 0..<16 {
                let b = chunk + 4 * i
                w[i] = UInt32(message[b]) << 24 | UInt32(message[b + 1]) << 16 | UInt32(message[b + 2]) << 8 | UInt32(message[b + 3])
            }
            for i in 16..<64 {
                let s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3)
                let s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10)
                w[i] = w[i - 16] &+ s0 &+ w[i - 7] &+ s1
            }
            var (a, b, c, d, e, f, g, hh) = (h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7])
            for i in 0..<64 {
                let s1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)
                let choice = (e & f) ^ (~e & g)
                let t1 = hh &+ s1 &+ choice &+ k[i] &+ w[i]
                let s0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)
                let majority = (a & b) ^ (a & c) ^ (b & c)
                let t2 = s0 &+ majority
                (hh, g, f, e, d, c, b, a) = (g, f, e, d &+ t1, c, b, a, t1 &+ t2)
            }
            h[0] &+= a; h[1] &+= b; h[2] &+= c; h[3] &+= d; h[4] &+= e; h[5] &+= f; h[6] &+= g; h[7] &+= hh
        }
        var out: [UInt8] = []
        for v in h { for s in [24, 16, 8, 0] { out.append(UInt8(truncatingIfNeeded: v >> UInt32(s))) } }
        return out
    }

    static func hex(_ data: Data) -> String {
        digest(data).map { String(format: "%02x", $0) }.joined()
    }
}
