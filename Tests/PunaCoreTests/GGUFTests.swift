import Foundation
import PunaCore
import XCTest

/// Reader round-trip and hostile-input tests. Valid files come from PunaCore's GGUFWriter; the
/// hostile ones are those files with truncations and damaged fields. Every damaged file must end
/// in a thrown PunaError (never a trap), and targeted damage must name the field.
final class GGUFTests: XCTestCase {
    var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("puna-gguf-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: dir)
    }

    func write(_ bytes: [UInt8], _ name: String = "f.gguf") -> String {
        let url = dir.appendingPathComponent(name)
        FileManager.default.createFile(atPath: url.path, contents: Data(bytes))
        return url.path
    }

    /// Opening must throw; returns the message.
    func openError(_ bytes: [UInt8], file: StaticString = #filePath, line: UInt = #line) -> String? {
        let path = write(bytes)
        do {
            _ = try GGUFFile(path: path)
            return nil
        } catch {
            return error.message
        }
    }

    /// A small valid file with every metadata type, a nested array and three tensors.
    func sampleWriter() -> GGUFWriter {
        var w = GGUFWriter()
        w.set("general.architecture", .string("llama"))
        w.set("u8", .uint8(200))
        w.set("i8", .int8(-5))
        w.set("u16", .uint16(60000))
        w.set("i16", .int16(-30000))
        w.set("u32", .uint32(4_000_000_000))
        w.set("i32", .int32(-2_000_000_000))
        w.set("f32", .float32(1.5))
        w.set("bool", .bool(true))
        w.set("str", .string("héllo ▁ 🙂"))
        w.set("u64", .uint64(1 << 40))
        w.set("i64", .int64(-(1 << 40)))
        w.set("f64", .float64(-2.25))
        w.set("arr", .array(.int32, [.int32(1), .int32(-2), .int32(3)]))
        w.set("nested", .array(.array, [.array(.string, [.string("a"), .string("bc")]), .array(.string, [])]))
        let f32 = (0..<8).map { Float($0) * 0.5 }
        w.addTensor(name: "a.weight", shape: [4, 2], type: .f32, bytes: f32.withUnsafeBytes { Array($0) })
        w.addTensor(name: "b.weight", shape: [32, 1], type: .q8_0, bytes: [UInt8](repeating: 7, count: 34))
        w.addTensor(name: "c.weight", shape: [2, 2, 2], type: .f16, bytes: [UInt8](repeating: 0, count: 16))
        return w
    }

    func testRoundTripEveryValueType() throws {
        let bytes = sampleWriter().serialize()
        let g = try GGUFFile(path: write(bytes))
        XCTAssertEqual(g.version, 3)
        XCTAssertEqual(g.keys.first, "general.architecture")
        XCTAssertEqual(g.architecture, "llama")
        XCTAssertEqual(g.int("u8"), 200)
        XCTAssertEqual(g.int("i8"), -5)
        XCTAssertEqual(g.int("u16"), 60000)
        XCTAssertEqual(g.int("i16"), -30000)
        XCTAssertEqual(g.int("u32"), 4_000_000_000)
        XCTAssertEqual(g.int("i32"), -2_000_000_000)
        XCTAssertEqual(g.float("f32"), 1.5)
        XCTAssertEqual(g.bool("bool"), true)
        XCTAssertEqual(g.string("str"), "héllo ▁ 🙂")
        XCTAssertEqual(g.int("u64"), 1 << 40)
        XCTAssertEqual(g.int("i64"), -(1 << 40))
        XCTAssertEqual(g.double("f64"), -2.25)
        XCTAssertEqual(g.intArray("arr"), [1, -2, 3])
        guard case .array(.array, let outer)? = g["nested"], outer.count == 2,
              case .array(.string, let inner) = outer[0] else { return XCTFail("nested array lost") }
        XCTAssertEqual(inner.compactMap { $0.stringValue }, ["a", "bc"])
        XCTAssertEqual(g.tensors.map { $0.name }, ["a.weight", "b.weight", "c.weight"])
        let a = try XCTUnwrap(g.tensorInfo("a.weight"))
        XCTAssertEqual(a.shape, [4, 2])
        XCTAssertEqual(a.byteCount, 32)
        let data = g.data(of: a)
        XCTAssertEqual(data.loadUnaligned(fromByteOffset: 4 * 7, as: Float.self), 3.5)
        XCTAssertEqual(g.dataOffset % 32, 0)
        XCTAssertEqual(g.tensorInfo("c.weight")?.shape, [2, 2, 2])
        XCTAssertEqual(g.tensorInfo("b.weight")?.type, .q8_0)
        // Tensor data are views into the mapping, not copies.
        let base = try XCTUnwrap(g.file.baseAddress)
        XCTAssertEqual(data.baseAddress, base + g.dataOffset + a.offset)
    }

    func testCustomAlignment() throws {
        var w = sampleWriter()
        w.alignment = 64
        let g = try GGUFFile(path: write(w.serialize()))
        XCTAssertEqual(g.alignment, 64)
        XCTAssertEqual(g.dataOffset % 64, 0)
        for t in g.tensors { XCTAssertEqual(t.offset % 64, 0) }
    }

    func testVocabOnlyFileLoads() throws {
        var w = GGUFWriter()
        w.set("general.architecture", .string("llama"))
        w.set("tokenizer.ggml.model", .string("llama"))
        w.set("tokenizer.ggml.tokens", .array(.string, [.string("<unk>"), .string("a")]))
        let g = try GGUFFile(path: write(w.serialize()))
        XCTAssertTrue(g.tensors.isEmpty)
        XCTAssertEqual(g.stringArray("tokenizer.ggml.tokens"), ["<unk>", "a"])
    }

    func testEveryTruncationThrows() throws {
        let bytes = sampleWriter().serialize()
        let g = try GGUFFile(path: write(bytes, "full.gguf"))
        let last = g.tensors.max { $0.offset < $1.offset }!
        let dataEnd = g.dataOffset + last.offset + last.byteCount
        var cases = 0
        for cut in 0..<dataEnd {
            let message = openError(Array(bytes[0..<cut]))
            XCTAssertNotNil(message, "truncation at \(cut) of \(bytes.count) was accepted")
            cases += 1
        }
        XCTAssertGreaterThan(cases, 300)
    }

    func testRandomByteDamageNeverTraps() throws {
        // Flip every byte of the header, metadata and tensor infos in several ways: each must either
        // load or throw; a trap would kill the test process.
        let bytes = sampleWriter().serialize()
        let g = try GGUFFile(path: write(bytes, "full.gguf"))
        var thrown = 0, loaded = 0
        for i in 0..<g.dataOffset {
            for pattern: UInt8 in [0xFF, 0x80, 0x01, 0x7F] {
                var damaged = bytes
                damaged[i] ^= pattern
                if openError(damaged) == nil { loaded += 1 } else { thrown += 1 }
            }
        }
        XCTAssertGreaterThan(thrown, g.dataOffset)  // most damage is detected
        _ = loaded
    }

    // MARK: targeted damage, with the field named in the message

    /// Layout of a hand-made file: header, one string key "k" = "v", one F32 tensor "t" [4].
    func handMade(stringLength: UInt64 = 1, kvCount: UInt64 = 1, tensorCount: UInt64 = 1,
                  nDims: UInt32 = 1, dims: [UInt64] = [4], type: UInt32 = 0, offset: UInt64 = 0,
                  valueType: UInt32 = 8) -> [UInt8] {
        var b: [UInt8] = []
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { b += $0 } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { b += $0 } }
        u32(0x4655_4747); u32(3); u64(tensorCount); u64(kvCount)
        u64(1); b += Array("k".utf8); u32(valueType); u64(stringLength); b += Array("v".utf8)
        u64(1); b += Array("t".utf8); u32(nDims); for d in dims { u64(d) }; u32(type); u64(offset)
        while b.count % 32 != 0 { b.append(0) }
        b += [UInt8](repeating: 0, count: 16)
        return b
    }

    func testHandMadeFileIsValid() throws {
        let g = try GGUFFile(path: write(handMade()))
        XCTAssertEqual(g.string("k"), "v")
        XCTAssertEqual(g.tensorInfo("t")?.byteCount, 16)
    }

    func assertError(_ bytes: [UInt8], contains needles: [String], file: StaticString = #filePath, line: UInt = #line) {
        guard let m = openError(bytes) else { return XCTFail("accepted", file: file, line: line) }
        for n in needles { XCTAssertTrue(m.contains(n), "'\(m)' does not mention '\(n)'", file: file, line: line) }
    }

    func testHostileFields() {
        assertError(handMade(stringLength: 1 << 63), contains: ["string length", "metadata 'k'"])
        assertError(handMade(stringLength: UInt64.max), contains: ["string length"])
        assertError(handMade(kvCount: 1 << 63), contains: ["metadata_kv_count"])
        assertError(handMade(tensorCount: 1 << 63), contains: ["tensor_count"])
        assertError(handMade(tensorCount: 1 << 40), contains: ["tensor_count"])
        assertError(handMade(nDims: 5, dims: [1, 1, 1, 1, 4]), contains: ["tensor 't'", "dimensions"])
        assertError(handMade(nDims: 0, dims: []), contains: ["tensor 't'", "dimensions"])
        assertError(handMade(dims: [1 << 63]), contains: ["tensor 't'", "dimension 0"])
        assertError(handMade(nDims: 2, dims: [1 << 32, 1 << 32]), contains: ["tensor 't'", "overflow"])
        assertError(handMade(nDims: 4, dims: [1 << 20, 1 << 20, 1 << 20, 1 << 20]), contains: ["tensor 't'", "overflow"])
        assertError(handMade(type: 77), contains: ["tensor 't'", "unknown type id 77"])
        assertError(handMade(type: 4), contains: ["tensor 't'", "unknown type id 4"])
        assertError(handMade(offset: 1 << 40), contains: ["tensor 't'", "past the end"])
        assertError(handMade(offset: UInt64.max - 31), contains: ["tensor 't'"])
        assertError(handMade(offset: 3), contains: ["tensor 't'", "alignment"])
        assertError(handMade(dims: [1 << 30]), contains: ["tensor 't'", "past the end"])
        assertError(handMade(type: 2), contains: ["tensor 't'", "block size"])  // 4 weights of q4_0
        assertError(handMade(valueType: 99), contains: ["metadata 'k'", "unknown value type 99"])
    }

    func testHostileArrays() {
        var w = GGUFWriter()
        w.set("a", .array(.uint8, [.uint8(1)]))
        var bytes = w.serialize()
        // header 24 + key (8 + 1) + value type 4 + element type 4 → count at 41
        let countOffset = 24 + 9 + 4 + 4
        for (i, byte) in withUnsafeBytes(of: (UInt64(1) << 63).littleEndian, { Array($0) }).enumerated() {
            bytes[countOffset + i] = byte
        }
        assertError(bytes, contains: ["element count of metadata 'a'"])
        // An array nested deeper than the reader allows.
        var deep: GGUFValue = .array(.uint8, [])
        for _ in 0..<20 { deep = .array(.array, [deep]) }
        var d = GGUFWriter()
        d.set("deep", deep)
        assertError(d.serialize(), contains: ["metadata 'deep'", "nests arrays"])
        // Unknown element type.
        var e = w.serialize()
        e[24 + 9 + 4] = 42
        assertError(e, contains: ["metadata 'a'", "unknown value type 42"])
    }

    func testBadAlignmentAndDuplicates() {
        var w = GGUFWriter()
        w.set("general.alignment", .uint32(48))
        assertError(w.serialize(), contains: ["general.alignment", "power of two"])
        var z = GGUFWriter()
        z.set("general.alignment", .uint32(0))
        assertError(z.serialize(), contains: ["general.alignment"])
        var t = GGUFWriter()
        t.set("general.alignment", .string("32"))
        assertError(t.serialize(), contains: ["general.alignment", "u32"])
        var dup = GGUFWriter()
        dup.addTensor(name: "x", shape: [1], type: .f32, bytes: [0, 0, 0, 0])
        dup.addTensor(name: "x", shape: [1], type: .f32, bytes: [0, 0, 0, 0])
        assertError(dup.serialize(), contains: ["duplicate tensor name 'x'"])
    }

    func testNotGGUFEmptyDirectoryMissing() throws {
        XCTAssertTrue(openError(Array("hello world, not a model".utf8))!.contains("not a GGUF file"))
        XCTAssertTrue(openError([])!.contains("empty file"))
        XCTAssertTrue(openError([0x47, 0x47])!.contains("truncated"))
        var v1 = handMade()
        v1[4] = 1
        XCTAssertTrue(openError(v1)!.contains("version 1"))
        do {
            _ = try GGUFFile(path: dir.path)
            XCTFail("directory accepted")
        } catch {
            XCTAssertTrue(error.message.contains("directory without config.json") && error.message.contains("neither a GGUF file nor a Hugging Face model folder"), error.message)
        }
        do {
            _ = try GGUFFile(path: dir.appendingPathComponent("missing.gguf").path)
            XCTFail("missing file accepted")
        } catch {
            XCTAssertTrue(error.message.contains("missing.gguf") && error.message.contains("No such file"), error.message)
        }
    }
}
