import CPuna
import Foundation
@_spi(Testing) import PunaCore
import XCTest

/// The findings of the fuzz campaign and the newcomer/embedder reports (issue 22), each reproduced:
/// hostile files that trapped, inputs that were read without bound or blocked, values accepted that
/// turned into infinities, batch records torn by a full disk, ids that clashed.
final class HardeningTests: XCTestCase {
    var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("puna-hardening-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: dir)
    }

    func file(_ name: String) -> String { dir.appendingPathComponent(name).path }

    func write(_ bytes: [UInt8], _ name: String) -> String {
        FileManager.default.createFile(atPath: file(name), contents: Data(bytes))
        return file(name)
    }

    /// The message of the error `body` must throw.
    func message(_ body: () throws -> Void, file: StaticString = #filePath, line: UInt = #line) -> String {
        do {
            try body()
            XCTFail("no error thrown", file: file, line: line)
        } catch let error as PunaError {
            return error.message
        } catch {
            XCTFail("not a PunaError: \(error)", file: file, line: line)
        }
        return ""
    }

    /// Runs puna and kills it after `timeout` seconds (a hang is a failure, not a stuck suite).
    func runPuna(_ arguments: [String], timeout: Double = 60, shellPrefix: String? = nil,
                 file: StaticString = #filePath, line: UInt = #line) throws -> (status: Int32, out: String, err: String) {
        let p = Process()
        if let shellPrefix {
            // For limits set by the shell (ulimit) before exec'ing puna.
            p.executableURL = URL(fileURLWithPath: "/bin/bash")
            let quoted = ([Fixtures.punaBinary.path] + arguments).map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }
            p.arguments = ["-c", shellPrefix + "; exec " + quoted.joined(separator: " ")]
        } else {
            p.executableURL = Fixtures.punaBinary
            p.arguments = arguments
        }
        p.currentDirectoryURL = dir
        let outURL = dir.appendingPathComponent("stdout-\(UUID().uuidString)"), errURL = dir.appendingPathComponent("stderr-\(UUID().uuidString)")
        FileManager.default.createFile(atPath: outURL.path, contents: nil)
        FileManager.default.createFile(atPath: errURL.path, contents: nil)
        p.standardOutput = try FileHandle(forWritingTo: outURL)
        p.standardError = try FileHandle(forWritingTo: errURL)
        p.standardInput = FileHandle.nullDevice
        p.environment = ProcessInfo.processInfo.environment.merging(
            ["PUNA_DEMO_DIR": Fixtures.root.deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("models/demo").path]) { $1 }
        try p.run()
        let deadline = Date().addingTimeInterval(timeout)
        while p.isRunning && Date() < deadline { usleep(20_000) }
        if p.isRunning {
            p.terminate()
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            XCTFail("puna \(arguments.joined(separator: " ")) still ran after \(timeout) s", file: file, line: line)
        }
        p.waitUntilExit()
        return (p.terminationStatus, try String(contentsOf: outURL, encoding: .utf8), try String(contentsOf: errURL, encoding: .utf8))
    }

    // MARK: GGUF and safetensors

    func testZeroDimensionWithOverflowingOthersIsRefused() throws {
        // [0, 2^40, 2^40]: the element count is 0, the row count (2^80) overflows.
        var w = GGUFWriter()
        w.set("general.architecture", .string("llama"))
        w.addTensor(name: "blk.0.attn_q.weight", shape: [0, 1 << 40, 1 << 40], type: .f32, bytes: [])
        let path = write(w.serialize(), "dims.gguf")
        let m = message { _ = try GGUFFile(path: path) }
        XCTAssertTrue(m.contains("'blk.0.attn_q.weight'") && m.contains("overflow"), m)

        let header = #"{"t": {"dtype": "F32", "shape": [0, 1099511627776, 1099511627776], "data_offsets": [0, 0]}}"#
        var bytes = withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { Array($0) }
        bytes += Array(header.utf8)
        let st = write(bytes, "dims.safetensors")
        let s = message { _ = try SafetensorsFile(path: st) }
        XCTAssertTrue(s.contains("'t'") && s.contains("overflows"), s)
    }

    /// A minimal GGUF with raw string bytes, for pieces that are not UTF-8.
    func vocabularyFile(_ pieces: [[UInt8]]) -> [UInt8] {
        var out: [UInt8] = []
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        func string(_ b: [UInt8]) { u64(UInt64(b.count)); out += b }
        u32(0x4655_4747); u32(3); u64(0); u64(3)
        string(Array("tokenizer.ggml.model".utf8)); u32(8); string(Array("llama".utf8))
        string(Array("tokenizer.ggml.add_space_prefix".utf8)); u32(7); out.append(0)
        string(Array("tokenizer.ggml.tokens".utf8)); u32(9); u32(8); u64(UInt64(pieces.count))
        for p in pieces { string(p) }
        return out
    }

    func testInvalidUTF8PiecesKeepTheirBytes() throws {
        // Two pieces that are each one stray byte: decoded lossily both were U+FFFD, a duplicate.
        let pieces: [[UInt8]] = [Array("<unk>".utf8), Array("<s>".utf8), Array("</s>".utf8), [0xFF], [0xFE], Array("a".utf8)]
        let path = write(vocabularyFile(pieces), "vocab.gguf")
        let gguf = try GGUFFile(path: path)
        let tokenizer = try Tokenizer(gguf: gguf)
        XCTAssertEqual(tokenizer.decodeBytes([3]), [0xFF])
        XCTAssertEqual(tokenizer.decodeBytes([4]), [0xFE])
        XCTAssertEqual(tokenizer.encode(utf8: [0xFE, 0xFF], addBOS: false), [4, 3])
        // Written back byte for byte (puna merge copies the metadata).
        var w = GGUFWriter()
        for key in gguf.keys { w.set(key, gguf[key]!) }
        let original = vocabularyFile(pieces), written = w.serialize()
        XCTAssertEqual(Array(written.prefix(original.count)), original)
        XCTAssertTrue(written.dropFirst(original.count).allSatisfy { $0 == 0 })  // alignment padding
    }

    func testErrorMessagesCutLongHostileStrings() throws {
        var w = GGUFWriter()
        let name = String(repeating: "x", count: 60_000)
        w.addTensor(name: name, shape: [4], type: GGMLType(rawValue: 999), bytes: [])
        let path = write(w.serialize(), "long.gguf")
        let m = message { _ = try GGUFFile(path: path) }
        XCTAssertLessThanOrEqual(m.utf8.count, PunaError.maxMessageBytes + 64, "\(m.utf8.count) bytes")
        XCTAssertTrue(m.hasPrefix(path) && m.contains("bytes cut") && m.hasSuffix("unknown type id 999"), m)
        // The CLI prints the same short line.
        let (status, _, err) = try runPuna(["info", "-m", path])
        XCTAssertEqual(status, 1)
        XCTAssertLessThan(err.utf8.count, 2048, "\(err.utf8.count) bytes on stderr")
        // Cutting keeps whole characters.
        let cut = clipped(String(repeating: "é🙂", count: 500), maxBytes: 101)
        XCTAssertTrue(cut.hasPrefix("é🙂") && cut.contains("bytes cut"), cut)
    }

    // MARK: model hyperparameters

    /// tiny-mha-f32.gguf written again with `change` applied to its metadata.
    func modelWith(_ name: String, _ change: (inout [String: GGUFValue], inout [String]) -> Void) throws -> String {
        let source = try GGUFFile(path: Fixtures.models.appendingPathComponent("tiny-mha-f32.gguf").path)
        var metadata = source.metadata, keys = source.keys
        change(&metadata, &keys)
        var w = GGUFWriter()
        for key in keys { if let v = metadata[key] { w.set(key, v) } }
        for t in source.tensors { w.addTensor(name: t.name, shape: t.shape, type: t.type, bytes: Array(source.data(of: t))) }
        return write(w.serialize(), name)
    }

    func testOutOfRangeHyperparametersAreRefused() throws {
        let good = try LanguageModel(path: Fixtures.models.appendingPathComponent("tiny-mha-f32.gguf").path, options: ModelOptions(threads: 1))
        let headDim = good.config.headDimension, layers = good.config.blockCount
        // Matching key/value lengths are fine.
        let same = try modelWith("same.gguf") { m, k in
            m["llama.attention.key_length"] = .uint32(UInt32(headDim)); k.append("llama.attention.key_length")
        }
        XCTAssertNoThrow(try LanguageModel(path: same, options: ModelOptions(threads: 1)))
        // A key length other than n_embd / n_heads is a head size of its own (Qwen3): this file's
        // Q matrix then has the wrong shape, which the error names. A value length unlike the key
        // length is refused by name.
        let keyLength = try modelWith("kv.gguf") { m, k in
            for key in ["llama.attention.key_length", "llama.attention.value_length"] { m[key] = .uint32(UInt32(headDim * 2)); k.append(key) }
        }
        let keyMessage = message { _ = try LanguageModel(path: keyLength, options: ModelOptions(threads: 1)) }
        XCTAssertTrue(keyMessage.contains("blk.0.attn_q.weight") && keyMessage.contains("expected"), keyMessage)
        let valueLength = try modelWith("kv.gguf") { m, k in m["llama.attention.value_length"] = .uint32(UInt32(headDim * 2)); k.append("llama.attention.value_length") }
        let valueMessage = message { _ = try LanguageModel(path: valueLength, options: ModelOptions(threads: 1)) }
        XCTAssertTrue(valueMessage.contains("llama.attention.value_length") && valueMessage.contains("\(headDim * 2)"), valueMessage)
        let fewer = try modelWith("blocks.gguf") { m, _ in m["llama.block_count"] = .uint32(UInt32(layers - 1)) }
        let blocks = message { _ = try LanguageModel(path: fewer, options: ModelOptions(threads: 1)) }
        XCTAssertTrue(blocks.contains("llama.block_count") && blocks.contains("blk.\(layers - 1)."), blocks)
        for (key, value) in [("llama.rope.freq_base", GGUFValue.float32(1e-45)), ("llama.rope.freq_base", .float32(.infinity)),
                             ("llama.attention.layer_norm_rms_epsilon", .float32(0)), ("llama.attention.layer_norm_rms_epsilon", .float32(1e30))] {
            let path = try modelWith("rope.gguf") { m, k in
                if m[key] == nil { k.append(key) }
                m[key] = value
            }
            let msg = message { _ = try LanguageModel(path: path, options: ModelOptions(threads: 1)) }
            XCTAssertTrue(msg.contains(key), msg)
        }
    }

    func testMemoryEstimateSaturatesOnHostileSizes() throws {
        // Found by the gguf fuzz target: a [2^57, 0] tensor (0 elements, so the file is well formed)
        // overflowed the estimate's activation sizes; block_count and context of 2^30 its KV cache.
        let path = try modelWith("estimate.gguf") { m, _ in
            m["llama.block_count"] = .uint32(1 << 30)
            m["llama.context_length"] = .uint32(1 << 30)
        }
        var w = GGUFWriter()
        let source = try GGUFFile(path: path)
        for key in source.keys { w.set(key, source[key]!) }
        for t in source.tensors { w.addTensor(name: t.name, shape: t.shape, type: t.type, bytes: Array(source.data(of: t))) }
        w.addTensor(name: "extra.weight", shape: [1 << 57, 0], type: .q8_0, bytes: [])
        let hostile = write(w.serialize(), "estimate2.gguf")
        let gguf = try GGUFFile(path: hostile)
        let config = try ModelConfig(gguf: gguf)
        let estimate = MemoryEstimate.llama(gguf: gguf, config: config, settings: MemoryEstimate.Settings(context: 1 << 30, batch: 512, threads: 2))
        XCTAssertEqual(estimate.bytes("kv_cache"), MemoryEstimate.saturated)
        XCTAssertLessThanOrEqual(estimate.totalBytes, MemoryEstimate.saturated)
        let (status, out, err) = try runPuna(["info", "-m", hostile, "--ctx", "16777216"])
        XCTAssertEqual(status, 0, err)
        XCTAssertTrue(out.contains("TiB"), out)
    }

    // MARK: adapters

    static let loraDir = Fixtures.root.appendingPathComponent("lora")

    func adapterFolder(_ change: (inout [String: Any]) -> Void) throws -> String {
        let dest = dir.appendingPathComponent("adapter-\(UUID().uuidString)")
        try FileManager.default.copyItem(at: Self.loraDir.appendingPathComponent("mha-all"), to: dest)
        let url = dest.appendingPathComponent("adapter_config.json")
        var config = try Fixtures.json(url)
        change(&config)
        try JSONSerialization.data(withJSONObject: config).write(to: url)
        return dest.path
    }

    func adapterError(_ path: String) throws -> String {
        let base = try LanguageModel(path: Fixtures.models.appendingPathComponent("tiny-mha-f32.gguf").path, options: ModelOptions(threads: 1))
        return message { _ = try LoRAAdapter.load(path: path, for: base) }
    }

    func testAdapterNumbersOutOfRangeAreRefused() throws {
        // Ranks ≥ 2^63 trapped in Double → Int; 8.7 was truncated to 8.
        for rank in [1e19, 1e308, 8.7, 0, -8] as [Double] {
            let m = try adapterError(try adapterFolder { $0["rank_pattern"] = ["q_proj": rank] })
            XCTAssertTrue(m.contains("rank_pattern") && m.contains("'q_proj'") && m.contains("whole number"), m)
        }
        for alpha in [1e19, 1e308] as [Double] {
            let m = try adapterError(try adapterFolder { $0["alpha_pattern"] = ["q_proj": alpha] })
            XCTAssertTrue(m.contains("alpha_pattern") && m.contains("'q_proj'"), m)
            let top = try adapterError(try adapterFolder { $0["lora_alpha"] = alpha })
            XCTAssertTrue(top.contains("'lora_alpha'") && top.contains("magnitude"), top)
        }
        let rank = try adapterError(try adapterFolder { $0["r"] = 1e19 })
        XCTAssertTrue(rank.contains("'r'"), rank)
        // Sane patterns still load.
        let base = try LanguageModel(path: Fixtures.models.appendingPathComponent("tiny-mha-f32.gguf").path, options: ModelOptions(threads: 1))
        XCTAssertNoThrow(try LoRAAdapter.load(path: try adapterFolder { $0["alpha_pattern"] = ["q_proj": 32] }, for: base))

        // A GGUF LoRA whose alpha is FLT_MAX: merging wrote NaN weights and exited 0.
        let source = try GGUFFile(path: Self.loraDir.appendingPathComponent("mha-all.gguf").path)
        var w = GGUFWriter()
        for key in source.keys { w.set(key, key == "adapter.lora.alpha" ? .float32(.greatestFiniteMagnitude) : source[key]!) }
        for t in source.tensors { w.addTensor(name: t.name, shape: t.shape, type: t.type, bytes: Array(source.data(of: t))) }
        let huge = write(w.serialize(), "huge-alpha.gguf")
        let m = try adapterError(huge)
        XCTAssertTrue(m.contains("adapter.lora.alpha"), m)
        let (status, _, err) = try runPuna(["merge", "-m", Fixtures.models.appendingPathComponent("tiny-mha-f32.gguf").path,
                                            "--lora", huge, "-o", file("merged.gguf")])
        XCTAssertEqual(status, 1)
        XCTAssertTrue(err.contains("adapter.lora.alpha"), err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: file("merged.gguf")))
    }

    // MARK: the C kernels' status

    func testRefusedKernelCallsBecomeErrors() throws {
        // A Q8_0 matrix whose row length is not a whole number of blocks: puna_matmul refuses it.
        let pool = try XCTUnwrap(puna_pool_create(1))
        defer { puna_pool_destroy(pool) }
        let weights = [UInt8](repeating: 0, count: 256)
        let x = [Float](repeating: 1, count: 33)
        var y = [Float](repeating: 0, count: 2)
        let m = weights.withUnsafeBytes { w in
            x.withUnsafeBufferPointer { xp in
                y.withUnsafeMutableBufferPointer { yp in
                    message {
                        try Linear(name: "blk.0.attn_q.weight", type: .q8_0, rows: 2, cols: 33, weights: w.baseAddress!)
                            .forward(pool, xp.baseAddress!, yp.baseAddress!, nTokens: 1)
                    }
                }
            }
        }
        XCTAssertTrue(m.contains("internal error") && m.contains("blk.0.attn_q.weight"), m)
    }

    // MARK: inputs without bounds, and blocking files

    func testDevicesAndFIFOsAreRefusedWithoutReadingForever() throws {
        let input = file("in.jsonl")
        try Data(#"{"id": 1, "prompt": "A computer is", "max_tokens": 4}"#.utf8).write(to: URL(fileURLWithPath: input))
        let fifo = file("fifo")
        XCTAssertEqual(mkfifo(fifo, 0o644), 0)
        let cases: [([String], String)] = [
            (["run", "-f", "/dev/zero", "-n", "4"], "/dev/zero"),
            (["batch", "-i", "/dev/zero", "-o", file("out1.jsonl")], "/dev/zero"),
            (["perplexity", "-f", "/dev/zero"], "/dev/zero"),
            (["batch", "-i", input, "-o", "/dev/full"], "/dev/full"),
            (["info", "-m", fifo], fifo),
            (["batch", "-i", input, "-o", fifo], fifo),
        ]
        for (arguments, named) in cases {
            let start = Date()
            let (status, _, err) = try runPuna(arguments, timeout: 30)
            XCTAssertEqual(status, 1, "\(arguments): \(err)")
            XCTAssertTrue(err.contains(named), "\(arguments): \(err)")
            XCTAssertLessThan(Date().timeIntervalSince(start), 20, "\(arguments)")
        }
        // A FIFO as output of a merge of real files.
        let (status, _, err) = try runPuna(["merge", "-m", "\(Fixtures.models.path)/tiny-mha-f32.gguf",
                                            "--lora", Self.loraDir.appendingPathComponent("mha-all").path, "-o", fifo], timeout: 30)
        XCTAssertEqual(status, 1, err)
        XCTAssertTrue(err.contains("not a regular file"), err)
    }

    func testPromptsLongerThanTheContextAreRefusedBeforeTokenizing() throws {
        // 50 MB of prompt: tokenizing it whole took 1.6 GB and 23 s before the context check.
        let big = file("big.txt")
        let chunk = Data(String(repeating: "A computer is a machine. ", count: 40_000).utf8)   // 1 MB
        FileManager.default.createFile(atPath: big, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: big))
        for _ in 0..<50 { handle.write(chunk) }
        try handle.close()
        let start = Date()
        let (status, _, err) = try runPuna(["run", "-f", big, "-n", "1", "-c", "256"])
        XCTAssertEqual(status, 1, err)
        XCTAssertTrue(err.contains(big) && err.contains("longer than"), err)
        XCTAssertLessThan(Date().timeIntervalSince(start), 10)
        // Piped, it stops reading at the limit too.
        let (pipedStatus, _, pipedErr) = try runPuna(["run", "-f", "-", "-n", "1", "-c", "256"], shellPrefix: "exec < '\(big)'")
        XCTAssertEqual(pipedStatus, 1, pipedErr)
        XCTAssertTrue(pipedErr.contains("longer than"), pipedErr)

        // A 100 MB batch line peaked at 2.4 GiB; a 300 KB prompt is refused by its bytes alone.
        let lines = file("lines.jsonl")
        FileManager.default.createFile(atPath: lines, contents: nil)
        let out = try FileHandle(forWritingTo: URL(fileURLWithPath: lines))
        out.write(Data(#"{"id": "huge", "prompt": ""#.utf8))
        for _ in 0..<100 { out.write(chunk) }
        out.write(Data("\"}\n".utf8))
        out.write(Data(#"{"id": "long", "prompt": ""#.utf8))
        out.write(chunk.prefix(300_000))
        out.write(Data("\"}\n".utf8))
        out.write(Data((#"{"id": "ok", "prompt": "A computer is", "max_tokens": 4}"# + "\n").utf8))
        try out.close()
        let (bStatus, _, bErr) = try runPuna(["batch", "-i", lines, "-o", file("lines.out.jsonl"), "-c", "256"])
        XCTAssertEqual(bStatus, 0, bErr)
        let records = try String(contentsOfFile: file("lines.out.jsonl"), encoding: .utf8).split(separator: "\n").map {
            try XCTUnwrap(JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])
        }
        // The line too long to parse is known by its line number.
        let byID = Dictionary(uniqueKeysWithValues: records.map { (($0["id"] as? String) ?? "line \($0["line"] ?? "?")", $0) })
        XCTAssertTrue((byID["line 1"]?["error"] as? String)?.contains("more than the 4.00 MiB") ?? false, "\(byID.keys)")
        XCTAssertTrue((byID["long"]?["error"] as? String)?.contains("more than the context length 256") ?? false, "\(byID["long"] ?? [:])")
        XCTAssertEqual(byID["ok"]?["finish_reason"] as? String, "length")
        // The summary line's peak RSS: the 100 MB input read once, never parsed or tokenized.
        let rss = try XCTUnwrap(bErr.range(of: #"peak RSS [0-9.]+ MiB"#, options: .regularExpression).map { String(bErr[$0]) })
        let mib = try XCTUnwrap(Double(rss.dropFirst(9).dropLast(4)))
        XCTAssertLessThan(mib, 400, rss)
    }

    func testLongTextsAreTokenizedWindowByWindow() throws {
        let vocab = Fixtures.tokenizer.appendingPathComponent("tiny-spm-vocab.gguf").path
        let tokenizer = try Tokenizer(gguf: GGUFFile(path: vocab))
        var text = ""
        var generator = SystemRandomNumberGenerator()
        let words = ["the", "cat", " sat", "on", "\n", "mat", "  ", "é", "日本", "\n\n", "x"]
        for _ in 0..<3000 { text += words[Int(generator.next() % UInt64(words.count))] + (generator.next() % 3 == 0 ? " " : "") }
        let bytes = Array(text.utf8)
        let whole = tokenizer.encode(utf8: bytes, addBOS: true)
        for window in [1, 7, 64, 1000, 1 << 20] {
            let long = bytes.withUnsafeBufferPointer { tokenizer.encodeLong(utf8: $0, addBOS: true, window: window) }
            XCTAssertEqual(long, whole, "window \(window)")
        }
        // Working memory: one window at a time, against the whole text at once (VmHWM reset between).
        let big = Array(String(repeating: "A computer is a machine.\n", count: 160_000).utf8)   // 4 MB
        func peakGrowth(_ body: () -> Void) -> Int {
            try? "5".write(toFile: "/proc/self/clear_refs", atomically: false, encoding: .utf8)
            let before = Int(puna_current_rss_bytes())
            body()
            return Int(puna_peak_rss_bytes()) - before
        }
        var a: [Int32] = [], b: [Int32] = []
        let wholePeak = peakGrowth { a = tokenizer.encode(utf8: big, addBOS: true) }
        let windowPeak = peakGrowth { b = big.withUnsafeBufferPointer { tokenizer.encodeLong(utf8: $0, addBOS: true, window: 1 << 18) } }
        XCTAssertEqual(a, b)
        XCTAssertLessThan(windowPeak, wholePeak / 2, "window \(windowPeak) vs whole \(wholePeak) bytes")
    }

    // MARK: batch records

    func testImplicitIdsNeverClashWithGivenOnes() throws {
        let text = "{\"prompt\": \"A computer is\", \"max_tokens\": 3}\n{\"id\": 1, \"prompt\": \"A dog\", \"max_tokens\": 3}\n"
        let records = try Array(text.utf8).withUnsafeBufferPointer { try BatchInput.parse($0, source: "in.jsonl") }
        XCTAssertEqual(records.map { $0.id }, [.line(1), .number(1)])
        let input = file("ids.jsonl"), output = file("ids.out.jsonl")
        try Data(text.utf8).write(to: URL(fileURLWithPath: input))
        let (status, _, err) = try runPuna(["batch", "-i", input, "-o", output])
        XCTAssertEqual(status, 0, err)
        let lines = try String(contentsOfFile: output, encoding: .utf8).split(separator: "\n")
        let objects = try lines.map { try XCTUnwrap(JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]) }
        XCTAssertEqual(objects.count, 2)
        let implicit = try XCTUnwrap(objects.first { $0["line"] != nil })
        XCTAssertTrue(implicit["id"] is NSNull)
        XCTAssertEqual(implicit["line"] as? Int, 1)
        XCTAssertEqual(objects.first { $0["line"] == nil }?["id"] as? Int, 1)
        // A rerun finds both done.
        let (again, _, againErr) = try runPuna(["batch", "-i", input, "-o", output])
        XCTAssertEqual(again, 0, againErr)
        XCTAssertTrue(againErr.contains("nothing to do"), againErr)
    }

    func testAFullDiskLeavesNoTornRecord() throws {
        let input = file("full.jsonl"), output = file("full.out.jsonl")
        var lines = ""
        for i in 0..<40 { lines += "{\"id\": \(i), \"prompt\": \"A computer is\", \"max_tokens\": 24}\n" }
        try Data(lines.utf8).write(to: URL(fileURLWithPath: input))
        // A 2 KiB file-size limit stands in for a full disk (40 records take about 6 KiB): the write
        // that crosses it is cut short.
        let (status, _, err) = try runPuna(["batch", "-i", input, "-o", output, "--temp", "0"],
                                           shellPrefix: "trap '' XFSZ; ulimit -f 2")
        XCTAssertEqual(status, 1, err)
        XCTAssertTrue(err.contains("cannot write"), err)
        let data = try Data(contentsOf: URL(fileURLWithPath: output))
        XCTAssertGreaterThan(data.count, 0)
        XCTAssertEqual(data.last, 0x0A, "the file ends in half a record")
        for line in data.split(separator: 0x0A) {
            XCTAssertNotNil(try? JSONSerialization.jsonObject(with: Data(line)), String(decoding: line, as: UTF8.self))
        }
    }

    func testTokenizeParsesSpecialTokensOnlyWhenAsked() throws {
        guard let tree = LlamaTree.path else { throw XCTSkip("no llama.cpp tree (PUNA_LLAMA_TREE)") }
        let vocab = tree + "/models/ggml-vocab-qwen2.gguf"
        let plain = try runPuna(["tokenize", "-m", vocab, "--json", "--", "<|im_start|>hi"])
        let special = try runPuna(["tokenize", "-m", vocab, "--json", "--parse-special", "--", "<|im_start|>hi"])
        XCTAssertEqual(plain.status, 0, plain.err)
        XCTAssertFalse(plain.out.contains("151644"), plain.out)          // literal text by default
        XCTAssertTrue(special.out.hasPrefix("{\"tokens\":[151644,"), special.out)
        try Data("hello world".utf8).write(to: URL(fileURLWithPath: file("t.txt")))
        let fromFile = try runPuna(["tokenize", "-m", vocab, "--json", "-f", file("t.txt")])
        let fromArgument = try runPuna(["tokenize", "-m", vocab, "--json", "--", "hello world"])
        XCTAssertEqual(fromFile.out, fromArgument.out)
        let device = try runPuna(["tokenize", "-m", vocab, "-f", "/dev/zero"], timeout: 30)
        XCTAssertEqual(device.status, 1, device.err)
    }

    // MARK: the demo model as default

    func testBatchAndPerplexityDefaultToTheDemoModel() throws {
        let input = file("demo.jsonl"), text = file("demo.txt")
        try Data(#"{"id": "a", "prompt": "A computer is", "max_tokens": 4}"#.utf8).write(to: URL(fileURLWithPath: input))
        try Data(String(repeating: "You will have a long and happy life. ", count: 40).utf8).write(to: URL(fileURLWithPath: text))
        let (status, _, err) = try runPuna(["batch", "-i", input, "-o", file("demo.out.jsonl")])
        XCTAssertEqual(status, 0, err)
        let (pStatus, pOut, pErr) = try runPuna(["perplexity", "-f", text, "-c", "64", "--chunks", "2"])
        XCTAssertEqual(pStatus, 0, pErr)
        XCTAssertTrue(pOut.contains("[2]"), pOut)
    }
}
