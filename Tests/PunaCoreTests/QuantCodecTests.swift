import CPuna
import Foundation
import PunaCore
import XCTest

/// The GGML weight codecs of quants.c against independent references:
/// gguf-py (decode and the simple encoders, via scripts/fixtures/make_quant_fixtures.py),
/// llama.cpp's ggml_quantize_chunk (K-quant encoders, via scripts/fixtures/measure_kquant_error.py)
/// and Swift's own Float16 (f16 conversions).
final class QuantCodecTests: XCTestCase {
    private static let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/quants")

    private static let q2_K = GGMLType(rawValue: 10)
    private static let q3_K = GGMLType(rawValue: 11)
    /// Types gguf-py can quantize; their fixtures are input -> encoded -> decoded.
    private static let encodable: [GGMLType] = [.f32, .f16, .bf16, .q8_0, .q4_0, .q4_1, .q5_0, .q5_1]
    /// Types gguf-py only dequantizes; their fixtures are random valid blocks -> decoded.
    private static let decodeOnly: [GGMLType] = [q2_K, q3_K, .q4_K, .q5_K, .q6_K]

    private func bytes(_ name: String) throws -> [UInt8] {
        [UInt8](try Data(contentsOf: Self.dir.appendingPathComponent(name)))
    }

    private func floats(_ name: String) throws -> [Float] {
        let raw = try bytes(name)
        XCTAssertEqual(raw.count % 4, 0, name)
        let count = raw.count / 4
        var out = [Float](repeating: 0, count: count)
        out.withUnsafeMutableBytes { $0.copyBytes(from: raw[0..<count * 4]) }
        return out
    }

    /// Bit equality, except that any NaN matches any NaN: x86 and ARM produce different default NaNs
    /// for inf * 0 and inf - inf, which the fixtures' overflowing scales do produce.
    private func assertSameBits(_ got: [Float], _ want: [Float], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(got.count, want.count, "\(what): length", file: file, line: line)
        var mismatches = 0, first = -1
        for i in 0..<min(got.count, want.count) {
            let same = got[i].bitPattern == want[i].bitPattern || (got[i].isNaN && want[i].isNaN)
            if !same { mismatches += 1; if first < 0 { first = i } }
        }
        XCTAssertEqual(mismatches, 0, "\(what): \(mismatches) values differ, first at \(first)", file: file, line: line)
    }

    private func decode(_ type: GGMLType, _ blocks: [UInt8]) throws -> [Float] {
        let count = blocks.count / type.bytesPerBlock * type.blockSize
        return try blocks.withUnsafeBytes { try type.decode($0, count: count) }
    }

    // MARK: bit-exact against gguf-py

    func testDecodeMatchesGGUFPy() throws {
        for type in Self.encodable {
            let encoded = try bytes("\(type.name).encoded.bin")
            assertSameBits(try decode(type, encoded), try floats("\(type.name).decoded.f32"), "decode \(type.name)")
        }
        for type in Self.decodeOnly {
            let blocks = try bytes("\(type.name).blocks.bin")
            XCTAssertEqual(blocks.count % type.bytesPerBlock, 0)
            assertSameBits(try decode(type, blocks), try floats("\(type.name).decoded.f32"), "decode \(type.name)")
        }
    }

    func testEncodeMatchesGGUFPy() throws {
        for type in Self.encodable {
            let input = try floats("\(type.name).input.f32")
            let want = try bytes("\(type.name).encoded.bin")
            let got = try type.encode(input)
            XCTAssertEqual(got.count, want.count, "encode \(type.name): size")
            let differing = zip(got, want).enumerated().filter { $0.element.0 != $0.element.1 }.map { $0.offset }
            XCTAssertEqual(differing.count, 0, "encode \(type.name): \(differing.count) bytes differ, first at \(differing.first ?? -1)")
        }
    }

    // MARK: K-quant encoders against llama.cpp

    private static let kSets = ["gaussian", "heavy", "odd"]
    private static let kTypes: [GGMLType] = [.q4_K, .q5_K, .q6_K]

    /// Same bytes as llama.cpp's reference quantizer (ggml_quantize_chunk, no imatrix), block for block.
    func testKQuantEncodeMatchesLlamaCpp() throws {
        for set in Self.kSets {
            let input = try floats("kquant_\(set).f32")
            for type in Self.kTypes {
                let want = try bytes("kquant_\(set).\(type.name).llama.bin")
                let got = try type.encode(input)
                XCTAssertEqual(got.count, want.count, "\(set) \(type.name): size")
                var differing = 0
                for b in 0..<min(got.count, want.count) / type.bytesPerBlock {
                    let range = b * type.bytesPerBlock..<(b + 1) * type.bytesPerBlock
                    if got[range] != want[range] { differing += 1 }
                }
                XCTAssertEqual(differing, 0, "\(set) \(type.name): \(differing) super-blocks differ from llama.cpp")
            }
        }
    }

    /// llama.cpp's round-trip error, RMS(decoded - x) / RMS(x), on the committed K-quant inputs (the first
    /// 4 rows of each data set), as printed by
    ///   /work/cache/venv-quants/bin/python scripts/fixtures/measure_kquant_error.py
    /// "gaussian first 4": Q4_K 0.071649, Q5_K 0.036129, Q6_K 0.017871
    /// "heavy first 4":    Q4_K 0.099405, Q5_K 0.049958, Q6_K 0.027939
    /// (on the full 64 x 4096 sets: gaussian 0.071476 / 0.036147 / 0.017731, heavy 0.098670 / 0.050549 / 0.028221).
    /// Puna's encoder may be at most 2% worse.
    private static let llamaCppError: [String: [String: Double]] = [
        "gaussian": ["q4_K": 0.071649, "q5_K": 0.036129, "q6_K": 0.017871],
        "heavy": ["q4_K": 0.099405, "q5_K": 0.049958, "q6_K": 0.027939],
    ]

    func testKQuantRoundTripWithinLlamaCppError() throws {
        for (set, bounds) in Self.llamaCppError {
            let input = try floats("kquant_\(set).f32")
            for type in Self.kTypes {
                let decoded = try decode(type, try type.encode(input))
                var err = 0.0, energy = 0.0
                for (x, y) in zip(input, decoded) {
                    err += Double(y - x) * Double(y - x)
                    energy += Double(x) * Double(x)
                }
                let relative = (err / energy).squareRoot()
                let bound = try XCTUnwrap(bounds[type.name]) * 1.02
                XCTAssertLessThanOrEqual(relative, bound, "\(set) \(type.name) round-trip error")
                XCTAssertGreaterThan(relative, 0.0, "\(set) \(type.name) should lose something")
            }
        }
    }

    // MARK: f16 / bf16 scalars

    /// Every half against Swift's Float16, which converts in hardware or compiler-rt.
    func testF16ToF32Exhaustive() {
        var mismatches = 0
        for bits in 0...UInt16.max {
            let got = puna_f16_to_f32(bits)
            let want = Float(Float16(bitPattern: bits))
            if want.isNaN {
                // payload: ours keeps it unquieted like numpy; the platform may quiet it
                if !got.isNaN || got.sign != want.sign { mismatches += 1 }
            } else if got.bitPattern != want.bitPattern {
                mismatches += 1
            }
        }
        XCTAssertEqual(mismatches, 0)
    }

    func testF32ToF16RoundsLikeFloat16() {
        var probes: [Float] = []
        for bits in 0..<UInt16(0x7c00) {  // every finite positive half, and the exact midpoints above each one
            let h = Float(Float16(bitPattern: bits))
            probes.append(h)
            let next = Float(Float16(bitPattern: bits + 1))
            probes.append(Float((Double(h) + Double(next)) / 2))
        }
        var rng = SplitMix64(seed: 0x5eed)
        for _ in 0..<1_000_000 { probes.append(Float(bitPattern: UInt32(truncatingIfNeeded: rng.next()))) }
        probes += [65504, 65519.996, 65520, 1e10, .infinity, .leastNonzeroMagnitude, .leastNormalMagnitude,
                   Float(bitPattern: 0x3300_0000), Float(bitPattern: 0x3300_0001), -0.0]
        var mismatches = 0
        for x in probes + probes.map({ -$0 }) {
            let got = puna_f32_to_f16(x)
            if x.isNaN {
                // numpy's rule: a NaN stays a NaN of the same sign, keeping the top payload bits
                let payload = UInt16((x.bitPattern >> 13) & 0x3ff)
                let want = (x.sign == .minus ? 0x8000 : 0) | 0x7c00 | (payload == 0 ? 1 : payload)
                if got != want { mismatches += 1 }
            } else if got != Float16(x).bitPattern {
                mismatches += 1
            }
        }
        XCTAssertEqual(mismatches, 0)
    }

    func testBF16Exhaustive() {
        var mismatches = 0
        for bits in 0...UInt16.max where puna_bf16_to_f32(bits).bitPattern != UInt32(bits) << 16 { mismatches += 1 }
        XCTAssertEqual(mismatches, 0, "bf16 -> f32")

        // f32 -> bf16 against rounding decided in Double: nearest of the two neighbours, ties to the even one
        var rng = SplitMix64(seed: 0xbf16)
        mismatches = 0
        for i in 0..<1_000_000 {
            var bits = UInt32(truncatingIfNeeded: rng.next())
            if i % 4 == 0 { bits = (bits & 0xffff_0000) | 0x8000 }  // exact ties
            let x = Float(bitPattern: bits)
            let got = puna_f32_to_bf16(x)
            if x.isNaN {
                if !puna_bf16_to_f32(got).isNaN || (got & 0x8000 != 0) != (x.sign == .minus) { mismatches += 1 }
                continue
            }
            let lower = UInt16(bits >> 16), upper = lower &+ 1
            let value = Double(x).magnitude
            let lowValue = Double(puna_bf16_to_f32(lower)).magnitude
            // the step above the largest finite bf16 is inf; treat it as 2^128 for the rounding decision
            let upValue = (upper & 0x7fff) == 0x7f80 ? 0x1p128 : Double(puna_bf16_to_f32(upper)).magnitude
            let want: UInt16
            if bits & 0xffff == 0 || (lower & 0x7fff) == 0x7f80 { want = lower }  // exact, or inf
            else if value - lowValue < upValue - value { want = lower }
            else if value - lowValue > upValue - value { want = upper }
            else { want = lower & 1 == 0 ? lower : upper }
            if got != want { mismatches += 1 }
        }
        XCTAssertEqual(mismatches, 0, "f32 -> bf16")
    }

    // MARK: type table

    func testTypeTable() throws {
        // block size and bytes per block, from gguf-py's GGML_QUANT_SIZES
        let expected: [(UInt32, String, Int, Int)] = [
            (0, "f32", 1, 4), (1, "f16", 1, 2), (2, "q4_0", 32, 18), (3, "q4_1", 32, 20), (6, "q5_0", 32, 22),
            (7, "q5_1", 32, 24), (8, "q8_0", 32, 34), (9, "q8_1", 32, 36), (10, "q2_K", 256, 84),
            (11, "q3_K", 256, 110), (12, "q4_K", 256, 144), (13, "q5_K", 256, 176), (14, "q6_K", 256, 210),
            (15, "q8_K", 256, 292), (20, "iq4_nl", 32, 18), (23, "iq4_xs", 256, 136), (30, "bf16", 1, 2),
            (34, "tq1_0", 256, 54), (35, "tq2_0", 256, 66), (39, "mxfp4", 32, 17),
        ]
        for (id, name, blockSize, bytes) in expected {
            let t = GGMLType(rawValue: id)
            XCTAssertTrue(t.isKnown, name)
            XCTAssertEqual(t.name, name)
            XCTAssertEqual(t.blockSize, blockSize, name)
            XCTAssertEqual(t.bytesPerBlock, bytes, name)
            XCTAssertEqual(GGMLType(name: name.uppercased()), t)
        }
        for id: UInt32 in [4, 5, 31, 32, 33, 40, 1000] { XCTAssertFalse(GGMLType(rawValue: id).isKnown, "id \(id)") }
        XCTAssertEqual(GGMLType.q4_K.rowBytes(4096), 16 * 144)
        XCTAssertEqual(GGMLType.q8_0.rowBytes(4096), 128 * 34)
        XCTAssertEqual(GGMLType.f16.rowBytes(7), 14)
        XCTAssertNil(GGMLType.q4_0.rowBytes(100))

        for t in Self.encodable + Self.decodeOnly { XCTAssertTrue(t.canDecode, t.name) }
        for t in Self.encodable + Self.kTypes { XCTAssertTrue(t.canEncode, t.name) }
        XCTAssertFalse(Self.q2_K.canEncode)
        XCTAssertThrowsError(try Self.q2_K.encode([Float](repeating: 0, count: 256)))
        XCTAssertThrowsError(try GGMLType.q4_0.encode([Float](repeating: 0, count: 33)))
    }

    /// Encoding then decoding reproduces exactly what each format can represent.
    func testRoundTripOfRepresentableValues() throws {
        // integers -8...7 times a power of two are exact in Q4_0 when the block's extreme is -8
        let q4: [Float] = (0..<32).map { Float($0 % 16 - 8) * 0.25 }
        XCTAssertEqual(try decode(.q4_0, try GGMLType.q4_0.encode(q4)), q4)
        let q8: [Float] = (0..<32).map { Float($0 * 8 - 127) }
        XCTAssertEqual(try decode(.q8_0, try GGMLType.q8_0.encode(q8)), q8)
        let halves: [Float] = [0, -0.0, 1, -2.5, 65504, Float(bitPattern: 0x3380_0000), .infinity]  // 2^-24: smallest subnormal
        XCTAssertEqual(try decode(.f16, try GGMLType.f16.encode(halves)).map(\.bitPattern), halves.map(\.bitPattern))
    }
}

/// A tiny deterministic generator, so the random probes are the same on every run.
private struct SplitMix64 {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1330_11eb
        return z ^ (z >> 31)
    }
}
