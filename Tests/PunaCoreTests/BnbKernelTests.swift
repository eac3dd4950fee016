import CPuna
import Foundation
import PunaCore
import XCTest

/// bitsandbytes weights multiplied in place (Sources/CPuna/include/puna_bnb.h):
/// - dequantization equals bitsandbytes' own output bit for bit on the fixture checkpoints;
/// - every kernel family gives the scalar int8 family's bits (the definition in
///   Sources/CPuna/kernels_internal.h) for NF4 / odd code books, with and without double quant, and
///   int8, for any thread count, batched or alone; the scalar family stays within its activation and
///   code-table rounding of the f32 reference;
/// - puna_matmul_many / puna_lora_matmul_many1 take the pseudo-types next to GGML types;
/// - bad descriptors are refused with -1.
final class BnbKernelTests: XCTestCase {
    typealias Rng = KernelTests.Rng

    static let bnb4 = Int32(PUNA_TYPE_BNB4)
    static let int8 = Int32(PUNA_TYPE_BNB_INT8)
    static let nf4Map: [Float] = [-1.0, -0.6961928, -0.52507305, -0.3949175, -0.28444138, -0.18477343, -0.09105004, 0.0,
                                  0.0795803, 0.1609302, 0.2461123, 0.33791524, 0.44070983, 0.562617, 0.72295684, 1.0]

    override func tearDown() {
        puna_kernels_set_family(Int32(PUNA_KERNELS_AUTO.rawValue))
        puna_kernels_set_activation_levels(0)
        super.tearDown()
    }

    /// Every family this build and CPU can run, the scalar definition included.
    var families: [Int32] {
        (Int32(PUNA_KERNELS_SCALAR.rawValue)..<Int32(PUNA_KERNELS_FAMILY_COUNT.rawValue)).filter { puna_kernels_family_available($0) != 0 }
    }
    func name(_ family: Int32) -> String { String(cString: puna_kernels_family_name(family)) }

    /// A descriptor and the tables it points to, kept alive together.
    final class Weights {
        var buffers: [UnsafeMutableRawPointer] = []
        let desc4 = UnsafeMutablePointer<puna_bnb4_weight>.allocate(capacity: 1)
        let desc8 = UnsafeMutablePointer<puna_bnb_int8_weight>.allocate(capacity: 1)
        var type: Int32 = BnbKernelTests.bnb4
        var pointer: UnsafeRawPointer { type == BnbKernelTests.bnb4 ? UnsafeRawPointer(desc4) : UnsafeRawPointer(desc8) }

        init() {
            desc4.initialize(to: puna_bnb4_weight())
            desc8.initialize(to: puna_bnb_int8_weight())
        }
        deinit {
            buffers.forEach { $0.deallocate() }
            desc4.deallocate()
            desc8.deallocate()
        }
        func copy<T>(_ values: [T]) -> UnsafeMutablePointer<T> {
            let p = UnsafeMutablePointer<T>.allocate(capacity: max(values.count, 1))
            p.initialize(from: values, count: values.count)
            buffers.append(UnsafeMutableRawPointer(p))
            return p
        }
        func copy(_ bytes: UnsafeRawBufferPointer) -> UnsafeMutableRawPointer {
            let p = UnsafeMutableRawPointer.allocate(byteCount: max(bytes.count, 1), alignment: 64)
            p.copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
            buffers.append(p)
            return p
        }
    }

    /// smallNestDoubleQuant: nested blocks of 4, so every 8 consecutive blocks span two or three.
    enum Kind: CaseIterable { case nf4DoubleQuant, nf4, oddMapDoubleQuant, smallNestDoubleQuant, int8 }

    /// Random weights of a kind: every 4-bit code and int8 value (-128 included) occurs.
    func randomWeights(_ kind: Kind, rows: Int, cols: Int, blocksize: Int, rng: inout Rng) -> Weights {
        let w = Weights()
        if kind == .int8 {
            w.type = Self.int8
            let q = (0..<(rows * cols)).map { _ in Int8(truncatingIfNeeded: rng.next()) }
            let scb = (0..<rows).map { r in (0.05 + Float(r % 7)) * (1 + rng.float(0.5)) }
            w.desc8.pointee = puna_bnb_int8_weight(weight: w.copy(q), row_scale: w.copy(scb))
            return w
        }
        let n = rows * cols, blocks = n / blocksize
        let packed = (0..<(n / 2)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        var map = Self.nf4Map
        if kind == .oddMapDoubleQuant {
            map = (0..<16).map { _ in rng.float(0.75) }
            map[5] = -0.75
        }
        var d = puna_bnb4_weight()
        d.packed = UnsafePointer(w.copy(packed))
        d.quant_map = UnsafePointer(w.copy(map))
        d.blocksize = Int64(blocksize)
        if kind == .nf4 {
            d.absmax = UnsafePointer(w.copy((0..<blocks).map { b in 0.01 + abs(rng.float()) * Float(1 + b % 3) }))
        } else {
            let nested = kind == .oddMapDoubleQuant ? 3 : kind == .smallNestDoubleQuant ? 4 : 256  // 3: the division path
            let nn = (blocks + nested - 1) / nested
            d.absmax_codes = UnsafePointer(w.copy((0..<blocks).map { _ in UInt8(truncatingIfNeeded: rng.next()) }))
            d.nested_quant_map = UnsafePointer(w.copy((0..<256).map { _ in rng.float() }))
            d.nested_absmax = UnsafePointer(w.copy((0..<nn).map { _ in 0.01 + abs(rng.float(0.2)) }))
            d.nested_blocksize = Int64(nested)
            d.nested_offset = 0.4
        }
        w.desc4.pointee = d
        return w
    }

    func dequantize(_ w: Weights, rows: Int, cols: Int) -> [Float] {
        var out = [Float](repeating: .nan, count: rows * cols)
        let rc = out.withUnsafeMutableBufferPointer { o in
            w.type == Self.bnb4 ? puna_bnb4_dequantize_rows(w.desc4, Int64(cols), 0, Int64(rows), o.baseAddress)
                                : puna_bnb_int8_dequantize_rows(w.desc8, Int64(cols), 0, Int64(rows), o.baseAddress)
        }
        XCTAssertEqual(rc, 0)
        return out
    }

    func matmul(_ pool: OpaquePointer, family: Int32, _ w: Weights, rows: Int, cols: Int, _ x: [Float], tokens: Int,
                file: StaticString = #filePath, line: UInt = #line) -> [Float] {
        XCTAssertEqual(puna_kernels_set_family(family), 0, file: file, line: line)
        var y = [Float](repeating: .nan, count: rows * tokens)
        let rc = y.withUnsafeMutableBufferPointer { puna_matmul(pool, w.type, w.pointer, Int64(rows), Int64(cols), x, Int64(tokens), $0.baseAddress) }
        XCTAssertEqual(rc, 0, file: file, line: line)
        return y
    }

    func sameBits(_ a: [Float], _ b: [Float]) -> Bool { a.elementsEqual(b) { $0.bitPattern == $1.bitPattern } }

    func activations(_ n: Int, cols: Int, rng: inout Rng) -> [Float] {
        var x = (0..<(n * cols)).map { i in rng.float(1 + Float(i % 5)) }
        if n > 1 { for c in 0..<cols { x[cols + c] = 0 } }  // an all-zero token
        if n > 2 { x[2 * cols] = 1e-30 }
        return x
    }

    // MARK: dequantization against bitsandbytes

    static let hf = Fixtures.root.appendingPathComponent("hf")

    func tensor(_ file: SafetensorsFile, _ name: String) throws -> UnsafeRawBufferPointer {
        let info = try XCTUnwrap(file.tensorInfo(name), name)
        return file.data(of: info)
    }

    func dump(_ name: String) throws -> [Float] {
        let data = try Data(contentsOf: Self.hf.appendingPathComponent(name))
        return data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    }

    /// The q_proj of a 4-bit fixture as a descriptor (tensor names as transformers writes them).
    func fixture4(_ folder: String, quantState: String) throws -> Weights {
        let file = try SafetensorsFile(path: Self.hf.appendingPathComponent(folder).appendingPathComponent("model.safetensors").path)
        let base = "model.layers.0.self_attn.q_proj.weight"
        let w = Weights()
        let state = try JSONValue.parse(bytes: Array(try tensor(file, base + ".quant_state." + quantState)))
        var d = puna_bnb4_weight()
        d.packed = UnsafePointer(w.copy(try tensor(file, base)).assumingMemoryBound(to: UInt8.self))
        d.quant_map = UnsafePointer(w.copy(try tensor(file, base + ".quant_map")).assumingMemoryBound(to: Float.self))
        d.blocksize = Int64(try XCTUnwrap(state["blocksize"]?.int))
        let absmax = try tensor(file, base + ".absmax")
        if let nested = file.tensorInfo(base + ".nested_absmax") {
            d.absmax_codes = UnsafePointer(w.copy(absmax).assumingMemoryBound(to: UInt8.self))
            d.nested_absmax = UnsafePointer(w.copy(file.data(of: nested)).assumingMemoryBound(to: Float.self))
            d.nested_quant_map = UnsafePointer(w.copy(try tensor(file, base + ".nested_quant_map")).assumingMemoryBound(to: Float.self))
            d.nested_blocksize = Int64(try XCTUnwrap(state["nested_blocksize"]?.int))
            d.nested_offset = Float(try XCTUnwrap(state["nested_offset"]?.double))
        } else {
            d.absmax = UnsafePointer(w.copy(absmax).assumingMemoryBound(to: Float.self))
        }
        w.desc4.pointee = d
        return w
    }

    func testDequantizeMatchesBitsandbytes() throws {
        let rows = 256, cols = 256
        let cases: [(String, Weights)] = [
            ("llama-nf4-dq", try fixture4("llama-nf4-dq", quantState: "bitsandbytes__nf4")),
            ("llama-fp4", try fixture4("llama-fp4", quantState: "bitsandbytes__fp4")),
            ("llama-int8", try {
                let file = try SafetensorsFile(path: Self.hf.appendingPathComponent("llama-int8/model.safetensors").path)
                let w = Weights()
                w.type = Self.int8
                w.desc8.pointee = puna_bnb_int8_weight(
                    weight: UnsafePointer(w.copy(try tensor(file, "model.layers.0.self_attn.q_proj.weight")).assumingMemoryBound(to: Int8.self)),
                    row_scale: UnsafePointer(w.copy(try tensor(file, "model.layers.0.self_attn.q_proj.SCB")).assumingMemoryBound(to: Float.self)))
                return w
            }()),
        ]
        for (folder, w) in cases {
            let want = try dump(folder + ".q_proj.dequant.bin")
            XCTAssertEqual(want.count, rows * cols)
            if w.type == Self.bnb4 { XCTAssertEqual(w.desc4.pointee.absmax_codes != nil, folder.hasSuffix("-dq")) }
            let got = dequantize(w, rows: rows, cols: cols)
            if !sameBits(got, want) {
                let i = (0..<got.count).first { got[$0].bitPattern != want[$0].bitPattern }!
                XCTFail("\(folder): element \(i) = \(got[i]), bitsandbytes \(want[i])")
            }
            // a row range alone gives the same values
            var part = [Float](repeating: .nan, count: 5 * cols)
            let rc = part.withUnsafeMutableBufferPointer { o in
                w.type == Self.bnb4 ? puna_bnb4_dequantize_rows(w.desc4, Int64(cols), 3, 8, o.baseAddress)
                                    : puna_bnb_int8_dequantize_rows(w.desc8, Int64(cols), 3, 8, o.baseAddress)
            }
            XCTAssertEqual(rc, 0)
            XCTAssertTrue(sameBits(part, Array(want[(3 * cols)..<(8 * cols)])), folder)

            // the fixture through every family: same bits as scalar, which is close to the reference
            let pool = puna_pool_create(2)!
            defer { puna_pool_destroy(pool) }
            var rng = Rng(state: 5)
            let x = activations(3, cols: cols, rng: &rng)
            let scalar = matmul(pool, family: Int32(PUNA_KERNELS_SCALAR.rawValue), w, rows: rows, cols: cols, x, tokens: 3)
            for family in families {
                XCTAssertTrue(sameBits(matmul(pool, family: family, w, rows: rows, cols: cols, x, tokens: 3), scalar), "\(folder) \(name(family))")
            }
            assertNearReference(pool, w, rows: rows, cols: cols, x, tokens: 3, got: scalar, what: folder)
        }
    }

    /// The scalar int8 definition against the f32 reference, per output: each activation is off by at
    /// most half a step of its 32-block (amax / 254, one level), each 4-bit weight by at most half a
    /// step of the int8 code table (m / 254 times the block's absmax), plus f32 rounding:
    ///   |y - y_ref| <= sum_c (|w_c| + dw_c) * amax_c / 254 + dw_c * |x_c|  + 1e-5 * sum |w x|  (dw_c = 0 for int8)
    /// with a factor 1.01 for the roundings of the scales themselves.
    func assertNearReference(_ pool: OpaquePointer, _ w: Weights, rows: Int, cols: Int, _ x: [Float], tokens: Int, got: [Float],
                             what: String, file: StaticString = #filePath, line: UInt = #line) {
        let ref = matmul(pool, family: Int32(PUNA_KERNELS_REFERENCE.rawValue), w, rows: rows, cols: cols, x, tokens: tokens)
        let dec = dequantize(w, rows: rows, cols: cols)
        var m: Float = 0
        if w.type == Self.bnb4 { for k in 0..<16 { m = max(m, abs(w.desc4.pointee.quant_map[k])) } }
        for t in 0..<tokens {
            let xt = Array(x[(t * cols)..<((t + 1) * cols)])
            let amax = (0..<cols).map { c in xt[(c / 32 * 32)..<(c / 32 * 32 + 32)].map { abs($0) }.max()! }
            for r in 0..<rows {
                var bound = 0.0, mag = 0.0
                for c in 0..<cols {
                    let wc = Double(dec[r * cols + c])
                    // the block scale: |w| / |quant_map[code]| is absmax; use m / 254 * absmax via the code table
                    var dw = 0.0
                    if w.type == Self.bnb4 {
                        let d = w.desc4.pointee
                        let e = r * cols + c
                        let byte = d.packed[e / 2]
                        let code = Int(e % 2 == 0 ? byte >> 4 : byte & 15)
                        let q = Double(abs(d.quant_map[code]))
                        let absmax = q > 0 ? abs(wc) / q : absmax4(d, block: e / Int(d.blocksize))
                        dw = Double(m) / 254 * absmax
                    }
                    bound += (abs(wc) + dw) * Double(amax[c]) / 254 + dw * Double(abs(xt[c]))
                    mag += abs(wc * Double(xt[c]))
                }
                bound = bound * 1.01 + 1e-5 * mag + 1e-30
                let err = abs(Double(got[t * rows + r]) - Double(ref[t * rows + r]))
                if !(err <= bound) {
                    XCTFail("\(what): scalar y[\(t)][\(r)] = \(got[t * rows + r]), reference \(ref[t * rows + r]), bound \(bound)", file: file, line: line)
                    return
                }
            }
        }
    }

    func absmax4(_ d: puna_bnb4_weight, block b: Int) -> Double {
        if d.absmax_codes == nil { return Double(abs(d.absmax[b])) }
        let v = d.nested_quant_map[Int(d.absmax_codes[b])] * d.nested_absmax[b / Int(d.nested_blocksize)]
        return Double(abs(v + d.nested_offset))
    }

    // MARK: kernel families

    /// (rows, cols, tokens, blocksize): rows that are not whole 4-row tiles, one token and batches
    /// past the register tiles, partial 4-block activation groups, blocksizes 32, 64 and 128.
    static let shapes: [(rows: Int, cols: Int, tokens: Int, blocksize: Int)] = [
        (1, 64, 1, 64), (5, 128, 3, 64), (13, 192, 1, 64), (17, 320, 9, 64), (33, 64, 2, 32), (7, 256, 5, 128),
        (64, 96, 4, 32), (9, 448, 1, 64), (130, 128, 11, 64), (41, 1216, 1, 64), (70, 1216, 13, 64),
        (9, 512, 1, 64), (23, 2048, 1, 64),  // decode of blocksize 64: whole 8-block chunks, no tail
    ]

    func testFamiliesEqualScalarBits() {
        var rng = Rng(state: 17)
        let pools = [1, 2, 3].map { puna_pool_create(Int32($0))! }
        defer { pools.forEach { puna_pool_destroy($0) } }
        var checked = 0
        for levels in [1, 2] {
            puna_kernels_set_activation_levels(Int32(levels))
            for kind in Kind.allCases {
                for shape in Self.shapes {
                    let w = randomWeights(kind, rows: shape.rows, cols: shape.cols, blocksize: shape.blocksize, rng: &rng)
                    let x = activations(shape.tokens, cols: shape.cols, rng: &rng)
                    let want = matmul(pools[0], family: Int32(PUNA_KERNELS_SCALAR.rawValue), w, rows: shape.rows, cols: shape.cols, x, tokens: shape.tokens)
                    if shape.rows * shape.cols <= 70_000 {
                        assertNearReference(pools[1], w, rows: shape.rows, cols: shape.cols, x, tokens: shape.tokens, got: want, what: "\(kind) \(shape) levels \(levels)")
                    }
                    for family in families {
                        puna_kernels_set_family(family)
                        XCTAssertEqual(String(cString: puna_matmul_kernel_name(w.type)), name(family), "\(name(family)) lacks \(kind)")
                        for pool in pools {
                            let got = matmul(pool, family: family, w, rows: shape.rows, cols: shape.cols, x, tokens: shape.tokens)
                            checked += 1
                            if !sameBits(got, want) {
                                let i = (0..<got.count).first { got[$0].bitPattern != want[$0].bitPattern }!
                                XCTFail("\(name(family)) \(kind) \(shape) threads \(puna_pool_size(pool)) levels \(levels): y[\(i)] \(got[i]) vs scalar \(want[i])")
                                return
                            }
                        }
                        // each token alone gives the batch's bits
                        for t in 0..<shape.tokens where shape.tokens > 1 {
                            let one = matmul(pools[1], family: family, w, rows: shape.rows, cols: shape.cols, Array(x[(t * shape.cols)..<((t + 1) * shape.cols)]), tokens: 1)
                            XCTAssertTrue(sameBits(one, Array(want[(t * shape.rows)..<((t + 1) * shape.rows)])), "\(name(family)) \(kind) \(shape) token \(t) alone")
                        }
                    }
                }
            }
        }
        print("bnb kernels checked: \(families.map(name).joined(separator: " ")) (\(checked) matmuls)")
    }

    /// Extreme codes and activations at +-amax: the integer sums at their bounds, still bit-exact.
    func testExtremeValuesMatchScalar() {
        let pool = puna_pool_create(2)!
        defer { puna_pool_destroy(pool) }
        var rng = Rng(state: 3)
        let rows = 5, cols = 512
        for levels in [1, 2] {
            puna_kernels_set_activation_levels(Int32(levels))
            for kind in [Kind.nf4, .int8] {
                for fill in [UInt8(0x00), 0xff, 0x80, 0x7f, 0x0f, 0xf0] {
                    let w = randomWeights(kind, rows: rows, cols: cols, blocksize: 64, rng: &rng)
                    if kind == .int8 { w.desc8.pointee.weight.withMemoryRebound(to: UInt8.self, capacity: rows * cols) { UnsafeMutablePointer(mutating: $0).update(repeating: fill, count: rows * cols) } }
                    else { UnsafeMutablePointer(mutating: w.desc4.pointee.packed).update(repeating: fill, count: rows * cols / 2) }
                    for sign: Float in [1, -1] {
                        var x = [Float](repeating: sign * 2.5, count: 2 * cols)
                        for c in stride(from: 0, to: cols, by: 3) { x[cols + c] = -x[cols + c] }
                        let want = matmul(pool, family: Int32(PUNA_KERNELS_SCALAR.rawValue), w, rows: rows, cols: cols, x, tokens: 2)
                        XCTAssertTrue(want.allSatisfy { $0.isFinite })
                        for family in families {
                            XCTAssertTrue(sameBits(matmul(pool, family: family, w, rows: rows, cols: cols, x, tokens: 2), want), "\(name(family)) \(kind) fill \(fill) levels \(levels)")
                        }
                    }
                }
            }
        }
    }

    // MARK: many / LoRA

    func q8Weights(rows: Int, cols: Int, rng: inout Rng) -> [UInt8] {
        let v = rng.floats(rows * cols, 0.5)
        var out = [UInt8](repeating: 0, count: rows * cols / 32 * 34)
        let info = withUnsafePointer(to: puna_type_table) { $0.withMemoryRebound(to: puna_type_info.self, capacity: Int(PUNA_TYPE_COUNT.rawValue)) { $0[Int(PUNA_TYPE_Q8_0.rawValue)] } }
        out.withUnsafeMutableBytes { o in v.withUnsafeBufferPointer { info.encode($0.baseAddress, o.baseAddress, Int64(rows * cols)) } }
        return out
    }

    func testMatmulManyMixesBnbWithGGMLTypes() {
        var rng = Rng(state: 23)
        let cols = 320
        let rowsOf = [36, 20, 9, 12, 7]
        let nf4 = randomWeights(.nf4DoubleQuant, rows: rowsOf[0], cols: cols, blocksize: 64, rng: &rng)
        let q8 = q8Weights(rows: rowsOf[1], cols: cols, rng: &rng)
        let i8 = randomWeights(.int8, rows: rowsOf[2], cols: cols, blocksize: 64, rng: &rng)
        let f32 = rng.floats(rowsOf[3] * cols)
        let fp = randomWeights(.nf4, rows: rowsOf[4], cols: cols, blocksize: 32, rng: &rng)
        let types: [Int32] = [Self.bnb4, Int32(PUNA_TYPE_Q8_0.rawValue), Self.int8, Int32(PUNA_TYPE_F32.rawValue), Self.bnb4]
        let pools = [1, 2].map { puna_pool_create(Int32($0))! }
        defer { pools.forEach { puna_pool_destroy($0) } }
        q8.withUnsafeBytes { q8p in
            f32.withUnsafeBytes { f32p in
                let ptrs: [UnsafeRawPointer?] = [nf4.pointer, q8p.baseAddress, i8.pointer, f32p.baseAddress, fp.pointer]
                let rows = rowsOf.map { Int64($0) }
                for family in families + [Int32(PUNA_KERNELS_REFERENCE.rawValue)] {
                    XCTAssertEqual(puna_kernels_set_family(family), 0)
                    for tokens in [1, 5] {
                        let x = activations(tokens, cols: cols, rng: &rng)
                        for pool in pools {
                            var want: [[Float]] = []
                            for m in 0..<types.count {
                                var y = [Float](repeating: .nan, count: rowsOf[m] * tokens)
                                XCTAssertEqual(y.withUnsafeMutableBufferPointer { puna_matmul(pool, types[m], ptrs[m], rows[m], Int64(cols), x, Int64(tokens), $0.baseAddress) }, 0)
                                want.append(y)
                            }
                            let ys = rowsOf.map { UnsafeMutablePointer<Float>.allocate(capacity: $0 * tokens) }
                            defer { ys.forEach { $0.deallocate() } }
                            let yOpt: [UnsafeMutablePointer<Float>?] = ys
                            XCTAssertEqual(puna_matmul_many(pool, Int32(types.count), types, ptrs, rows, Int64(cols), x, Int64(tokens), yOpt), 0)
                            for m in 0..<types.count {
                                XCTAssertTrue(sameBits(Array(UnsafeBufferPointer(start: ys[m], count: rowsOf[m] * tokens)), want[m]),
                                              "\(name(family)) matrix \(m) tokens \(tokens) threads \(puna_pool_size(pool))")
                            }
                        }
                    }
                }
            }
        }
    }

    func testLoraMany1WithBnbEqualsMatmulThenApply() {
        var rng = Rng(state: 29)
        let cols = 256, rank = 8
        let rowsOf = [128, 70]  // whole LoRA tiles and a partial one
        let ws = [randomWeights(.nf4DoubleQuant, rows: rowsOf[0], cols: cols, blocksize: 64, rng: &rng),
                  randomWeights(.int8, rows: rowsOf[1], cols: cols, blocksize: 64, rng: &rng)]
        let pool = puna_pool_create(2)!
        defer { puna_pool_destroy(pool) }
        // one f32 pair per matrix
        var keep: [UnsafeMutableRawPointer] = []
        defer { keep.forEach { $0.deallocate() } }
        var factors: [puna_lora_factors] = []
        for m in 0..<2 {
            let a = rng.floats(rank * cols, 0.1), b = rng.floats(rowsOf[m] * rank, 0.1)
            let ap = UnsafeMutableRawPointer.allocate(byteCount: a.count * 4, alignment: 64)
            a.withUnsafeBytes { ap.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            let btBytes = Int(puna_lora_bt_bytes(Int32(PUNA_TYPE_F32.rawValue), Int64(rowsOf[m]), Int64(rank)))
            let bt = UnsafeMutableRawPointer.allocate(byteCount: btBytes, alignment: 64)
            XCTAssertEqual(b.withUnsafeBytes { puna_lora_pack_bt(Int32(PUNA_TYPE_F32.rawValue), $0.baseAddress, Int64(rowsOf[m]), Int64(rank), nil, bt) }, 0)
            keep += [ap, bt]
            factors.append(puna_lora_factors(a_type: Int32(PUNA_TYPE_F32.rawValue), bt_type: Int32(PUNA_TYPE_F32.rawValue), a: UnsafeRawPointer(ap),
                                             bt: UnsafeRawPointer(bt), rank: Int64(rank), cols: Int64(cols), outputs: Int64(rowsOf[m])))
        }
        let scales: [Float] = [0.5, 2.0]
        let x = activations(1, cols: cols, rng: &rng)
        for family in families + [Int32(PUNA_KERNELS_REFERENCE.rawValue)] {
            XCTAssertEqual(puna_kernels_set_family(family), 0)
            var want: [[Float]] = []
            for m in 0..<2 {
                var y = matmul(pool, family: family, ws[m], rows: rowsOf[m], cols: cols, x, tokens: 1)
                var f = factors[m]
                XCTAssertEqual(y.withUnsafeMutableBufferPointer { puna_lora_apply(pool, &f, x, $0.baseAddress, Int64(rowsOf[m]), 1, nil, nil, scales[m]) }, 0)
                want.append(y)
            }
            let ys = rowsOf.map { UnsafeMutablePointer<Float>.allocate(capacity: $0) }
            defer { ys.forEach { $0.deallocate() } }
            let pairs = factors.map { f -> UnsafeMutablePointer<puna_lora_factors> in
                let p = UnsafeMutablePointer<puna_lora_factors>.allocate(capacity: 1)
                p.initialize(to: f)
                return p
            }
            defer { pairs.forEach { $0.deallocate() } }
            let scalePtrs = scales.map { s -> UnsafeMutablePointer<Float> in
                let p = UnsafeMutablePointer<Float>.allocate(capacity: 1)
                p.initialize(to: s)
                return p
            }
            defer { scalePtrs.forEach { $0.deallocate() } }
            let types = ws.map { $0.type }
            let ptrs: [UnsafeRawPointer?] = ws.map { $0.pointer }
            let pairPtrs: [UnsafePointer<puna_lora_factors>?] = pairs.map { UnsafePointer($0) }
            let scaleOpt: [UnsafePointer<Float>?] = scalePtrs.map { UnsafePointer($0) }
            let yOpt: [UnsafeMutablePointer<Float>?] = ys
            XCTAssertEqual(puna_lora_matmul_many1(pool, 2, types, ptrs, rowsOf.map { Int64($0) }, Int64(cols), x, yOpt, pairPtrs, scaleOpt, [1, 1]), 0)
            for m in 0..<2 {
                XCTAssertTrue(sameBits(Array(UnsafeBufferPointer(start: ys[m], count: rowsOf[m])), want[m]), "\(name(family)) matrix \(m)")
            }
        }
    }

    // MARK: bad descriptors and dispatch answers

    func testBadDescriptorsAreRefused() {
        var rng = Rng(state: 31)
        let pool = puna_pool_create(2)!
        defer { puna_pool_destroy(pool) }
        let rows = 4, cols = 128
        let x = rng.floats(cols)
        var y = [Float](repeating: 0, count: rows)
        var out = [Float](repeating: 0, count: rows * cols)
        func refuses4(_ edit: (inout puna_bnb4_weight) -> Void, cols c: Int = cols, _ what: String) {
            let w = randomWeights(.nf4DoubleQuant, rows: rows, cols: cols, blocksize: 64, rng: &rng)
            edit(&w.desc4.pointee)
            XCTAssertEqual(puna_bnb4_validate(w.desc4, Int64(c)), -1, what)
            XCTAssertEqual(out.withUnsafeMutableBufferPointer { puna_bnb4_dequantize_rows(w.desc4, Int64(c), 0, Int64(rows), $0.baseAddress) }, -1, what)
            for family in families + [Int32(PUNA_KERNELS_REFERENCE.rawValue)] {
                puna_kernels_set_family(family)
                XCTAssertEqual(y.withUnsafeMutableBufferPointer { puna_matmul(pool, Self.bnb4, w.desc4, Int64(rows), Int64(c), x, 1, $0.baseAddress) }, -1, "\(what) \(name(family))")
                let ptrs: [UnsafeRawPointer?] = [UnsafeRawPointer(w.desc4)]
                let ys: [UnsafeMutablePointer<Float>?] = [y.withUnsafeMutableBufferPointer { $0.baseAddress }]
                XCTAssertEqual(puna_matmul_many(pool, 1, [Self.bnb4], ptrs, [Int64(rows)], Int64(c), x, 1, ys), -1, what)
                XCTAssertEqual(puna_lora_matmul_many1(pool, 1, [Self.bnb4], ptrs, [Int64(rows)], Int64(c), x, ys, [nil], [nil], [0]), -1, what)
            }
        }
        refuses4({ _ in }, cols: 96, "cols not a multiple of the blocksize")
        refuses4({ $0.packed = nil }, "NULL packed")
        refuses4({ $0.quant_map = nil }, "NULL quant_map")
        refuses4({ $0.nested_quant_map = nil }, "NULL nested_quant_map")
        refuses4({ $0.nested_absmax = nil }, "NULL nested_absmax")
        refuses4({ $0.nested_blocksize = 0 }, "nested_blocksize 0")
        refuses4({ $0.absmax_codes = nil }, "neither absmax nor codes")
        refuses4({ $0.blocksize = 0 }, "blocksize 0")
        refuses4({ $0.blocksize = -64 }, "negative blocksize")
        // a NaN code book cannot be mapped to int8 codes (dequantization itself still works)
        let nan = randomWeights(.nf4, rows: rows, cols: cols, blocksize: 64, rng: &rng)
        UnsafeMutablePointer(mutating: nan.desc4.pointee.quant_map)[3] = .nan
        XCTAssertEqual(puna_bnb4_validate(nan.desc4, Int64(cols)), -1)
        XCTAssertEqual(y.withUnsafeMutableBufferPointer { puna_matmul(pool, Self.bnb4, nan.desc4, Int64(rows), Int64(cols), x, 1, $0.baseAddress) }, -1)

        let i8 = randomWeights(.int8, rows: rows, cols: cols, blocksize: 64, rng: &rng)
        for edit: (inout puna_bnb_int8_weight) -> Void in [{ $0.weight = nil }, { $0.row_scale = nil }] {
            let saved = i8.desc8.pointee
            edit(&i8.desc8.pointee)
            XCTAssertEqual(out.withUnsafeMutableBufferPointer { puna_bnb_int8_dequantize_rows(i8.desc8, Int64(cols), 0, Int64(rows), $0.baseAddress) }, -1)
            XCTAssertEqual(y.withUnsafeMutableBufferPointer { puna_matmul(pool, Self.int8, i8.desc8, Int64(rows), Int64(cols), x, 1, $0.baseAddress) }, -1)
            i8.desc8.pointee = saved
        }
        // NULL descriptors, bad row ranges
        XCTAssertEqual(y.withUnsafeMutableBufferPointer { puna_matmul(pool, Self.bnb4, nil, Int64(rows), Int64(cols), x, 1, $0.baseAddress) }, -1)
        XCTAssertEqual(y.withUnsafeMutableBufferPointer { puna_matmul(pool, Self.int8, nil, Int64(rows), Int64(cols), x, 1, $0.baseAddress) }, -1)
        XCTAssertEqual(puna_bnb4_dequantize_rows(nil, Int64(cols), 0, 1, &out), -1)
        XCTAssertEqual(puna_bnb_int8_dequantize_rows(nil, Int64(cols), 0, 1, &out), -1)
        XCTAssertEqual(puna_bnb_int8_dequantize_rows(i8.desc8, Int64(cols), 2, 1, &out), -1)
        XCTAssertEqual(puna_bnb_int8_dequantize_rows(i8.desc8, Int64(cols), 0, 1, nil), -1)
    }

    /// Shapes the quantized kernels do not take (4-bit blocks of 16, int8 rows of 40 columns) go
    /// through the f32 reference: dequantized rows, so exactly the reference's result.
    func testOddShapesUseTheReference() {
        var rng = Rng(state: 37)
        let pool = puna_pool_create(2)!
        defer { puna_pool_destroy(pool) }
        for (kind, cols, bs) in [(Kind.nf4, 48, 16), (.int8, 40, 64)] {
            let rows = 6
            let w = randomWeights(kind, rows: rows, cols: cols, blocksize: bs, rng: &rng)
            let x = activations(2, cols: cols, rng: &rng)
            let ref = matmul(pool, family: Int32(PUNA_KERNELS_REFERENCE.rawValue), w, rows: rows, cols: cols, x, tokens: 2)
            // f32 dot of the dequantized rows, in double, as a sanity check of the reference itself
            let dec = dequantize(w, rows: rows, cols: cols)
            for t in 0..<2 { for r in 0..<rows {
                let exact = (0..<cols).reduce(0.0) { $0 + Double(dec[r * cols + $1]) * Double(x[t * cols + $1]) }
                XCTAssertEqual(Double(ref[t * rows + r]), exact, accuracy: 1e-4 * (abs(exact) + 1))
            } }
            for family in families {
                XCTAssertTrue(sameBits(matmul(pool, family: family, w, rows: rows, cols: cols, x, tokens: 2), ref), "\(name(family)) \(kind)")
            }
        }
    }

    func testDispatchAnswersForPseudoTypes() {
        for type in [Self.bnb4, Self.int8] {
            XCTAssertEqual(puna_matmul_supports(type), 1)
            for family in families {
                puna_kernels_set_family(family)
                XCTAssertEqual(String(cString: puna_matmul_kernel_name(type)), name(family))
                XCTAssertGreaterThan(puna_matmul_activation_bytes(type, 4096), 0)
            }
            puna_kernels_set_family(Int32(PUNA_KERNELS_REFERENCE.rawValue))
            XCTAssertEqual(String(cString: puna_matmul_kernel_name(type)), "reference")
            XCTAssertEqual(puna_matmul_activation_bytes(type, 4096), 0)
        }
        XCTAssertEqual(puna_matmul_supports(202), 0)
        XCTAssertNil(puna_matmul_kernel_name(202))
    }
}
