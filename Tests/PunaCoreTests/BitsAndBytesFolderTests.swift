import Foundation
import PunaCore
import XCTest

/// bitsandbytes folders (transformers `save_pretrained` of a 4-bit NF4 double-quant, 4-bit FP4 and
/// 8-bit model, scripts/fixtures/make_hf_models.py; a LLaMA with a SentencePiece tokenizer and a Qwen2
/// with a byte-level BPE tokenizer.json, biases and tied embeddings) run in place: logits against
/// transformers on the dequantized checkpoint, the PEFT adapter unmerged and merged into F16 copies,
/// `info` and the estimate, and hostile folders refused with the file and tensor named.
final class BitsAndBytesFolderTests: XCTestCase {
    static let root = Fixtures.root.appendingPathComponent("hf")
    static let quantized = ["llama-nf4-dq", "llama-fp4", "llama-int8", "qwen2-nf4-dq", "qwen2-fp4", "qwen2-int8"]
    /// The bases the PEFT adapter lora-llama was applied to by the fixture script.
    static let llamaQuantized = ["llama-nf4-dq", "llama-fp4", "llama-int8"]

    func folders() throws -> [String: [String: Any]] {
        try XCTUnwrap(Fixtures.json(Self.root.appendingPathComponent("manifest.json"))["folders"] as? [String: [String: Any]])
    }
    func path(_ name: String) -> String { Self.root.appendingPathComponent(name).path }
    /// The folder's own reference tokens (the Qwen2 folders'), else the LLaMA ones at the top of the manifest.
    func referenceTokens(_ folder: [String: Any] = [:]) throws -> [Int32] {
        if let own = folder["reference_tokens"] as? [Int] { return own.map { Int32($0) } }
        return try XCTUnwrap(Fixtures.json(Self.root.appendingPathComponent("manifest.json"))["reference_tokens"] as? [Int]).map { Int32($0) }
    }

    /// The project's tolerances: ≤ 5-bit weights 8e-2, 8-bit 6e-2 of max|logit|.
    func bound(_ name: String) -> Float { name.hasSuffix("int8") ? 6e-2 : 8e-2 }

    func logits(_ model: LanguageModel, _ folder: [String: Any] = [:]) throws -> [Float] {
        try model.evaluate(try referenceTokens(folder), cache: model.makeCache(contextLength: 64, type: .f32), allLogits: true)
    }

    /// Each folder against transformers' forward on the same checkpoint (its weights dequantized as
    /// bitsandbytes does, run in float64); batched equals one token at a time bit for bit, and the
    /// thread count changes nothing.
    func testLogitsMatchTransformers() throws {
        let all = try folders()
        for name in Self.quantized {
            let folder = try XCTUnwrap(all[name])
            let reference = try XCTUnwrap(folder["reference"] as? [String: Any])
            let expected = try Fixtures.floats(Self.root.appendingPathComponent(reference["logits"] as! String))
            let model = try LanguageModel(path: path(name), options: ModelOptions(threads: 2))
            XCTAssertTrue(model.gguf.tensors.contains { $0.type.isBitsAndBytes }, name)
            XCTAssertEqual(model.gguf.string("tokenizer.ggml.model"), name.hasPrefix("qwen2") ? "gpt2" : "llama", name)
            let batched = try logits(model, folder)
            let r = maxRelativeDifference(batched, expected)
            var line = "\(name) vs transformers: \(r)"
            if let mixed = folder["reference_mixed"] as? [String: Any] {
                let m = try Fixtures.floats(Self.root.appendingPathComponent(mixed["logits"] as! String))
                line += " (vs bitsandbytes' mixed int8/outlier inference: \(maxRelativeDifference(batched, m)))"
            }
            print(line)
            XCTAssertLessThanOrEqual(r, bound(name), name)
            // One token at a time, and one thread: the same bits.
            let tokens = try referenceTokens(folder)
            let single = try LanguageModel(path: path(name), options: ModelOptions(threads: 1))
            let cache = try single.makeCache(contextLength: 64, type: .f32)
            var stepwise: [Float] = []
            for t in tokens { stepwise += try single.evaluate([t], cache: cache, allLogits: true) }
            XCTAssertEqual(stepwise, batched, "\(name): one token at a time on one thread differs from the batch")
            if let greedy = reference["greedy_tokens"] as? [Int] {
                let prompt = try XCTUnwrap((folder["prompt_tokens"] as? [Int]) ?? (Fixtures.json(Self.root.appendingPathComponent("manifest.json"))["prompt_tokens"] as? [Int])).map { Int32($0) }
                let got = try Fixtures.greedy(model, prompt, count: greedy.count)
                let same = zip(got, greedy).prefix { $0 == Int32($1) }.count
                print("\(name): greedy tokens equal to transformers' for the first \(same) of \(greedy.count) (closest top-2 margin \(reference["greedy_min_top2_margin"] ?? "?"))")
            }
        }
    }

    /// The PEFT adapter trained against each base, applied per token and merged (an F16 copy of each
    /// updated matrix), against PeftModel on the dequantized base.
    func testPEFTAdapterUnmergedAndMerged() throws {
        let lora = try XCTUnwrap(try folders()["lora-llama"])
        let refs = try XCTUnwrap(lora["references"] as? [String: [String: Any]])
        for name in Self.llamaQuantized {
            let expected = try Fixtures.floats(Self.root.appendingPathComponent(try XCTUnwrap(refs[name]?["logits"] as? String)))
            var results: [Float] = []
            for merge in [false, true] {
                let model = try LanguageModel(path: path(name), options: ModelOptions(threads: 2))
                let adapter = try LoRAAdapter.load(path: path("lora-llama"), for: model)
                if merge {
                    let report = try model.mergeAdapters(AdapterSet([(adapter, 1)]))
                    XCTAssertEqual(report.entries.map { $0.type }, [.f16], "\(name): merged matrices become F16 copies")
                    XCTAssertEqual(report.mergedTensors.count, model.config.blockCount * 7)
                    XCTAssertEqual(report.bitsAndBytesCopies, model.config.blockCount * 7)
                    XCTAssertEqual(report.bitsAndBytesCopyBytes, model.config.blockCount * 2 * (5 * 256 * 256 + 2 * 64 * 256))  // F16: q, o, gate, up, down 256×256; k, v 64×256
                } else {
                    model.activeAdapters = AdapterSet([(adapter, 1)])
                }
                let got = try logits(model)
                let r = maxRelativeDifference(got, expected)
                print("lora-llama on \(name), merged \(merge): \(r)")
                XCTAssertLessThanOrEqual(r, bound(name), "\(name) merged: \(merge)")
                results.append(r)
            }
        }
    }

    /// `puna info` names the scheme; the estimate counts the quantized bytes and, with --merge-lora,
    /// the F16 copies; `puna run` on a folder generates.
    func testInfoEstimateAndRun() throws {
        let (status, out, err) = try Fixtures.runPuna(["info", "-m", path("llama-nf4-dq")])
        XCTAssertEqual(status, 0, err)
        XCTAssertTrue(out.contains("bnb-nf4-dq"), out)
        let (s2, merged, e2) = try Fixtures.runPuna(["info", "-m", path("llama-nf4-dq"), "--lora", path("lora-llama"), "--merge-lora", "-c", "64"])
        XCTAssertEqual(s2, 0, e2)
        XCTAssertTrue(merged.contains("F16 copies of bitsandbytes matrices"), merged)
        let (s3, text, e3) = try Fixtures.runPuna(["run", "-m", path("llama-int8"), "-p", "You may convey", "-n", "8", "--temp", "0"])
        XCTAssertEqual(s3, 0, e3)
        XCTAssertFalse(text.isEmpty)
        let (s4, _, e4) = try Fixtures.runPuna(["run", "-m", path("llama-nf4-dq"), "--lora", path("lora-llama"), "--merge-lora", "-p", "You may convey", "-n", "4", "--temp", "0"])
        XCTAssertEqual(s4, 0, e4)
        XCTAssertTrue(e4.contains("14 bitsandbytes matrices merged into F16 copies"), e4)
    }

    // MARK: hostile folders

    /// A safetensors file taken apart and put back together, to break one thing at a time.
    struct Safetensors {
        var entries: [(name: String, dtype: String, shape: [Int], bytes: Data)] = []

        init(_ url: URL) throws {
            let data = try Data(contentsOf: url)
            let n = Int(data.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
            let header = try XCTUnwrap(JSONSerialization.jsonObject(with: data.subdata(in: 8..<(8 + n))) as? [String: Any])
            for (name, value) in header where name != "__metadata__" {
                let v = try XCTUnwrap(value as? [String: Any])
                let range = try XCTUnwrap(v["data_offsets"] as? [Int])
                entries.append((name, v["dtype"] as! String, v["shape"] as! [Int], data.subdata(in: (8 + n + range[0])..<(8 + n + range[1]))))
            }
            entries.sort { $0.name < $1.name }
        }

        func write(_ url: URL) throws {
            var header: [String: Any] = [:]
            var offset = 0
            var body = Data()
            for e in entries {
                header[e.name] = ["dtype": e.dtype, "shape": e.shape, "data_offsets": [offset, offset + e.bytes.count]] as [String: Any]
                offset += e.bytes.count
                body.append(e.bytes)
            }
            var json = try JSONSerialization.data(withJSONObject: header)
            while json.count % 8 != 0 { json.append(0x20) }
            var out = Data()
            var n = UInt64(json.count).littleEndian
            withUnsafeBytes(of: &n) { out.append(contentsOf: $0) }
            out.append(json)
            out.append(body)
            try out.write(to: url)
        }

        mutating func edit(_ name: String, _ body: (inout (name: String, dtype: String, shape: [Int], bytes: Data)) -> Void) {
            guard let i = entries.firstIndex(where: { $0.name == name }) else { return XCTFail("no tensor \(name)") }
            body(&entries[i])
        }
        mutating func remove(_ name: String) {
            XCTAssertNotNil(entries.firstIndex { $0.name == name }, name)
            entries.removeAll { $0.name == name }
        }
    }

    func testHostileFoldersAreNamed() throws {
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("puna-bnb-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: tmp) }
        func message(_ folder: URL) -> String {
            do { _ = try LanguageModel(path: folder.path, options: ModelOptions(threads: 1)); return "loaded" } catch let e as PunaError { return e.message } catch { return "\(error)" }
        }
        /// A copy of `source` with its safetensors changed by `change`; the message loading it gives.
        func broken(_ source: String, config: ((inout [String: Any]) -> Void)? = nil,
                    _ change: (inout Safetensors) throws -> Void = { _ in }) throws -> String {
            let dest = tmp.appendingPathComponent(source + "-\(UUID().uuidString.prefix(8))")
            try FileManager.default.copyItem(at: Self.root.appendingPathComponent(source), to: dest)
            let weights = dest.appendingPathComponent("model.safetensors")
            var st = try Safetensors(weights)
            try change(&st)
            try st.write(weights)
            if let config {
                let file = dest.appendingPathComponent("config.json")
                var obj = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: file)) as? [String: Any])
                config(&obj)
                try JSONSerialization.data(withJSONObject: obj).write(to: file)
            }
            return message(dest)
        }
        func expect(_ m: String, _ parts: [String], file: StaticString = #filePath, line: UInt = #line) {
            for p in parts { XCTAssertTrue(m.contains(p), "expected '\(p)' in: \(m)", file: file, line: line) }
        }
        let q = "model.layers.0.self_attn.q_proj.weight"
        let state = q + ".quant_state.bitsandbytes__nf4"
        func stateJSON(_ edit: @escaping (inout [String: Any]) -> Void) -> (inout Safetensors) throws -> Void {
            { st in
                var failure: Error? = nil
                st.edit(state) { e in
                    do {
                        var obj = try XCTUnwrap(JSONSerialization.jsonObject(with: e.bytes) as? [String: Any])
                        edit(&obj)
                        e.bytes = try JSONSerialization.data(withJSONObject: obj)
                        e.shape = [e.bytes.count]
                    } catch { failure = error }
                }
                if let failure { throw failure }
            }
        }

        // The unchanged round trip loads (the editor itself breaks nothing).
        XCTAssertEqual(try broken("llama-nf4-dq"), "loaded")
        // quantization_config: another method, both bit widths, an unknown 4-bit type.
        expect(try broken("llama-nf4-dq", config: { c in var q = c["quantization_config"] as! [String: Any]; q["quant_method"] = "gptq"; c["quantization_config"] = q }),
               ["config.json", "quant_method 'gptq' is not supported"])
        expect(try broken("llama-nf4-dq", config: { c in var q = c["quantization_config"] as! [String: Any]; q["load_in_8bit"] = true; c["quantization_config"] = q }),
               ["exactly one of load_in_4bit and load_in_8bit"])
        expect(try broken("llama-nf4-dq", config: { c in var q = c["quantization_config"] as! [String: Any]; q["bnb_4bit_quant_type"] = "nf3"; c["quantization_config"] = q }),
               ["bnb_4bit_quant_type 'nf3'"])
        expect(try broken("llama-nf4-dq", config: { c in var q = c["quantization_config"] as! [String: Any]; q["bnb_4bit_quant_type"] = "fp4"; c["quantization_config"] = q }),
               ["quant_state is nf4 but config.json says fp4"])
        expect(try broken("llama-nf4-dq", config: { c in var q = c["quantization_config"] as! [String: Any]; q["bnb_4bit_use_double_quant"] = false; c["quantization_config"] = q }),
               ["bnb_4bit_use_double_quant false", "nested_absmax/nested_quant_map tensors are there"])
        // quant_state: missing, not JSON, wrong type, wrong blocksize, wrong or hostile shape, no offset.
        expect(try broken("llama-nf4-dq") { $0.remove(state) }, ["model.safetensors", q, "missing its companion tensor '\(state)'"])
        expect(try broken("llama-nf4-dq") { st in st.edit(state) { $0.bytes = Data("{\"shape\": [256,".utf8); $0.shape = [$0.bytes.count] } },
               [state, "not valid JSON"])
        expect(try broken("llama-nf4-dq", stateJSON { $0["quant_type"] = "fp4" }), [state, "quant_type 'fp4' but config.json says nf4"])
        expect(try broken("llama-nf4-dq", stateJSON { $0["blocksize"] = 128 }), [state, "blocksize must be 64"])
        expect(try broken("llama-nf4-dq", stateJSON { $0["shape"] = [256, 96] }), [state, "96 columns are not a whole number of blocks of 64"])
        expect(try broken("llama-nf4-dq", stateJSON { $0["shape"] = [128, 256] }), [q, "holds 32768 bytes, but a 128×256 4-bit weight packs into 16384"])
        expect(try broken("llama-nf4-dq", stateJSON { $0["shape"] = [1 << 40, 1 << 40] }), [state, "shape must be [rows, cols]"])
        expect(try broken("llama-nf4-dq", stateJSON { $0["shape"] = "256x256" }), [state, "shape must be [rows, cols]"])
        expect(try broken("llama-nf4-dq", stateJSON { $0.removeValue(forKey: "nested_offset") }), [state, "nested_offset must be a finite number"])
        // The packed codes, absmax, tables: wrong sizes and dtypes, non-finite values.
        expect(try broken("llama-nf4-dq") { st in st.edit(q) { $0.bytes = $0.bytes.prefix(32767); $0.shape = [32767, 1] } },
               [q, "holds 32767 bytes, but a 256×256 4-bit weight packs into 32768"])
        expect(try broken("llama-nf4-dq") { st in st.edit(q) { $0.dtype = "I8" } }, [q, "dtype I8", "U8"])
        expect(try broken("llama-nf4-dq") { st in st.edit(q + ".absmax") { $0.bytes = $0.bytes.prefix(1000); $0.shape = [1000] } },
               ["\(q).absmax' must be 1024 U8 codes", "found 1000 U8"])
        expect(try broken("llama-nf4-dq") { st in st.edit(q + ".absmax") { $0.bytes = Data(count: 4096); $0.shape = [1024]; $0.dtype = "F32" } },
               ["\(q).absmax' must be 1024 U8 codes", "found 1024 F32"])
        expect(try broken("llama-nf4-dq") { st in st.edit(q + ".quant_map") { $0.bytes = $0.bytes.prefix(32); $0.shape = [8] } },
               ["\(q).quant_map' must be 16 F32 values"])
        expect(try broken("llama-nf4-dq") { st in st.edit(q + ".quant_map") { var b = $0.bytes; b.replaceSubrange(4..<8, with: [0, 0, 0xc0, 0x7f]); $0.bytes = b } },
               ["\(q).quant_map' holds a non-finite value at index 1"])
        expect(try broken("llama-nf4-dq") { st in st.edit(q + ".nested_absmax") { $0.bytes = $0.bytes.prefix(8); $0.shape = [2] } },
               ["\(q).nested_absmax' must be 4 F32 values"])
        expect(try broken("llama-nf4-dq") { $0.remove(q + ".nested_quant_map") }, [q, "missing its companion tensor '\(q).nested_quant_map'"])
        expect(try broken("llama-nf4-dq") { $0.remove(q + ".absmax") }, [q, "missing its companion tensor '\(q).absmax'"])
        // A companion whose weight is not there; a quantized tensor that is no weight.
        expect(try broken("llama-nf4-dq") { st in st.edit(q + ".absmax") { $0.name = "model.layers.0.self_attn.q_proj.other.weight.absmax" } },
               ["'model.layers.0.self_attn.q_proj.other.weight.absmax' belongs to no nf4-quantized weight"])
        expect(try broken("llama-nf4-dq") { $0.remove(q) }, ["belongs to no nf4-quantized weight"])
        // 8-bit: row scales missing or of the wrong length, another layout, a weight of the wrong dtype or shape.
        let q8 = "model.layers.0.self_attn.q_proj"
        expect(try broken("llama-int8") { $0.remove(q8 + ".SCB") }, [q8 + ".weight", "missing its row scales '\(q8).SCB'"])
        expect(try broken("llama-int8") { st in st.edit(q8 + ".SCB") { $0.bytes = $0.bytes.prefix(400); $0.shape = [100] } },
               ["'\(q8).SCB' must be 256 F32 values"])
        expect(try broken("llama-int8") { st in st.edit(q8 + ".weight_format") { $0.bytes = Data([1]) } }, ["weight_format' is not 0 (row-major)"])
        expect(try broken("llama-int8") { st in st.edit(q8 + ".weight") { $0.dtype = "U8" } }, [q8 + ".weight", "dtype U8", "I8 [rows, cols]"])
        expect(try broken("llama-int8") { st in st.edit(q8 + ".weight") { $0.shape = [128, 512] } }, ["'\(q8).SCB' must be 128 F32 values"])
        expect(try broken("llama-int8", config: { c in var q = c["quantization_config"] as! [String: Any]; q["llm_int8_has_fp16_weight"] = true; c["quantization_config"] = q }),
               ["llm_int8_has_fp16_weight"])
    }
}
