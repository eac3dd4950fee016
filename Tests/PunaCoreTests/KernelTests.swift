import CPuna
import Foundation
import XCTest

/// The C reference kernels against naive Swift versions computed in Double, on seeded random data
/// with odd sizes, and the thread pool's contract (every thread index once per run, nothing left
/// running when run returns). Kernels that split work over threads must give bit-identical results
/// for 1, 2, 3 and 4 threads.
final class KernelTests: XCTestCase {
    static let threadCounts: [Int32] = [1, 2, 3, 4]

    // MARK: helpers

    /// SplitMix64: reproducible data without Foundation's unseeded generators.
    struct Rng {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        /// Uniform in [-scale, scale).
        mutating func float(_ scale: Float = 1) -> Float {
            Float(Double(next() >> 11) / Double(1 << 53) * 2 - 1) * scale
        }
        mutating func floats(_ n: Int, _ scale: Float = 1) -> [Float] { (0..<n).map { _ in float(scale) } }
    }

    func withPools(_ body: (Int32, OpaquePointer) throws -> Void) rethrows {
        for n in Self.threadCounts {
            let pool = puna_pool_create(n)!
            defer { puna_pool_destroy(pool) }
            try body(n, pool)
        }
    }

    func typeInfo(_ type: Int) -> puna_type_info {
        withUnsafePointer(to: puna_type_table) {
            $0.withMemoryRebound(to: puna_type_info.self, capacity: Int(PUNA_TYPE_COUNT.rawValue)) { $0[type] }
        }
    }

    // MARK: thread pool

    func testPoolRunsEveryThreadIndexOncePerRun() {
        for n in Self.threadCounts {
            let pool = puna_pool_create(n)!
            XCTAssertEqual(puna_pool_size(pool), n)
            let counts = UnsafeMutablePointer<Int64>.allocate(capacity: 8 * 16)  // one cache line each
            counts.initialize(repeating: 0, count: 8 * 16)
            let runs = 1000
            for run in 1...runs {
                puna_pool_run(pool, { ctx, index, total in
                    let c = ctx!.assumingMemoryBound(to: Int64.self)
                    // Uneven work, so a run that returned early would be caught below.
                    var spin: Int64 = 0
                    for i in 0..<Int64((index * 37) % 100) { spin &+= i }
                    c[Int(index) * 16] += 1 + spin * 0
                    c[7 * 16] = Int64(total)
                }, counts)
                for i in 0..<Int(n) where counts[i * 16] != Int64(run) {
                    XCTFail("threads \(n) run \(run): index \(i) ran \(counts[i * 16]) times")
                    return
                }
                XCTAssertEqual(counts[7 * 16], Int64(n))
            }
            for i in Int(n)..<7 { XCTAssertEqual(counts[i * 16], 0, "index \(i) must not exist with \(n) threads") }
            counts.deallocate()
            puna_pool_destroy(pool)
        }
    }

    /// Runs spaced wider than the workers' spin window (they sleep and must be woken) and workers
    /// slower than the caller's spin window (the caller sleeps and must be woken).
    func testPoolSleepingPaths() {
        for n: Int32 in [2, 3] {
            let pool = puna_pool_create(n)!
            let counts = UnsafeMutablePointer<Int64>.allocate(capacity: 4 * 16)
            counts.initialize(repeating: 0, count: 4 * 16)
            for run in 1...40 {
                usleep(run % 2 == 0 ? 1000 : 0)
                puna_pool_run(pool, { ctx, index, _ in
                    if index > 0 {
                        let end = puna_now_ns() + 200_000
                        while puna_now_ns() < end {}
                    }
                    ctx!.assumingMemoryBound(to: Int64.self)[Int(index) * 16] += 1
                }, counts)
                for i in 0..<Int(n) { XCTAssertEqual(counts[i * 16], Int64(run), "threads \(n) run \(run) index \(i)") }
            }
            counts.deallocate()
            puna_pool_destroy(pool)
        }
    }

    func testPoolCreateDestroyWithoutRunsAndDefaultSize() {
        for i in 0..<50 {
            let pool = puna_pool_create(Int32(1 + i % 4))
            XCTAssertNotNil(pool)
            if i % 2 == 0 {  // a run straight after create must not be missed by a starting worker
                let counts = UnsafeMutablePointer<Int32>.allocate(capacity: 4)
                counts.initialize(repeating: 0, count: 4)
                puna_pool_run(pool, { ctx, index, _ in ctx!.assumingMemoryBound(to: Int32.self)[Int(index)] = 1 }, counts)
                XCTAssertEqual((0..<Int(1 + i % 4)).map { counts[$0] }, Array(repeating: 1, count: 1 + i % 4))
                counts.deallocate()
            }
            puna_pool_destroy(pool)
        }
        let pool = puna_pool_create(0)!
        XCTAssertEqual(puna_pool_size(pool), puna_cpu_count())
        puna_pool_destroy(pool)
    }

    func testPoolScratchIsAlignedAndPerThread() {
        let pool = puna_pool_create(3)!
        defer { puna_pool_destroy(pool) }
        var stride: Int64 = 0
        let a = puna_pool_scratch(pool, 10, &stride)!
        XCTAssertGreaterThanOrEqual(stride, 10)
        XCTAssertEqual(Int(bitPattern: a) % 64, 0)
        XCTAssertEqual(stride % 16, 0)
        let b = puna_pool_scratch(pool, 1000, &stride)!
        XCTAssertGreaterThanOrEqual(stride, 1000)
        XCTAssertEqual(Int(bitPattern: b) % 64, 0)
        b[Int(2 * stride + 999)] = 1  // thread 2's last float is ours to write
    }

    // MARK: matmul

    /// Packs random weights as `type` and returns (blocks, their decoded f32 values), or nil when
    /// the type has no decoder. Types with a decoder but no encoder get random block bytes, redrawn
    /// per block until the block decodes to finite values (a random f16 scale can be inf or nan).
    func makeWeights(type: Int, rows: Int, cols: Int, rng: inout Rng) -> ([UInt8], [Float])? {
        let values = rng.floats(rows * cols)
        if type == Int(PUNA_TYPE_F32.rawValue) {
            return (values.withUnsafeBytes { Array($0) }, values)
        }
        let info = typeInfo(type)
        guard let decode = info.decode else { return nil }
        let bytes = rows * cols / Int(info.block_size) * Int(info.type_size)
        var blocks = [UInt8](repeating: 0, count: bytes)
        if type == Int(PUNA_TYPE_F16.rawValue) {
            blocks.withUnsafeMutableBytes { b in for i in 0..<values.count { b.storeBytes(of: puna_f32_to_f16(values[i]), toByteOffset: 2 * i, as: UInt16.self) } }
        } else if type == Int(PUNA_TYPE_BF16.rawValue) {
            blocks.withUnsafeMutableBytes { b in for i in 0..<values.count { b.storeBytes(of: puna_f32_to_bf16(values[i]), toByteOffset: 2 * i, as: UInt16.self) } }
        } else if let encode = info.encode {
            values.withUnsafeBufferPointer { v in blocks.withUnsafeMutableBytes { encode(v.baseAddress, $0.baseAddress, Int64(values.count)) } }
        } else {
            let blockBytes = Int(info.type_size), blockSize = Int(info.block_size)
            var one = [Float](repeating: 0, count: blockSize)
            for b in 0..<(bytes / blockBytes) {
                var block = [UInt8](repeating: 0, count: blockBytes)
                repeat {
                    for i in 0..<blockBytes { block[i] = UInt8(truncatingIfNeeded: rng.next()) }
                    block.withUnsafeBytes { decode($0.baseAddress, &one, Int64(blockSize)) }
                } while !one.allSatisfy { $0.isFinite }
                blocks.replaceSubrange((b * blockBytes)..<((b + 1) * blockBytes), with: block)
            }
        }
        var decoded = [Float](repeating: 0, count: rows * cols)
        blocks.withUnsafeBytes { b in decoded.withUnsafeMutableBufferPointer { decode(b.baseAddress, $0.baseAddress, Int64(rows * cols)) } }
        return (blocks, decoded)
    }

    func runMatmul(_ pool: OpaquePointer, type: Int, _ blocks: [UInt8], rows: Int, cols: Int, _ x: [Float], tokens: Int) -> (Int32, [Float]) {
        var y = [Float](repeating: .nan, count: rows * tokens)
        let rc = blocks.withUnsafeBytes { w in
            y.withUnsafeMutableBufferPointer { puna_matmul(pool, Int32(type), w.baseAddress, Int64(rows), Int64(cols), x, Int64(tokens), $0.baseAddress) }
        }
        return (rc, y)
    }

    /// Every decodable type against a Double dot product of its decoded rows; identical bits for
    /// every thread count. Types without a decoder yet must be refused.
    func testMatmulMatchesNaiveForEveryDecodableType() {
        // The f32 reference's bound; the int8 families are checked against it in SimdKernelTests.
        puna_kernels_set_reference_only(1)
        defer { puna_kernels_set_reference_only(0) }
        var rng = Rng(state: 42)
        var tested: [String] = []
        for type in 0..<Int(PUNA_TYPE_COUNT.rawValue) {
            let info = typeInfo(type)
            guard let cname = info.name else { continue }
            let name = String(cString: cname)
            let block = Int(info.block_size)
            let shapes: [(rows: Int, blocks: Int, tokens: Int)] = block == 1
                ? [(1, 1, 1), (3, 7, 2), (5, 33, 1), (37, 257, 3), (1001, 64, 1), (130, 129, 6)]
                : [(1, 1, 1), (5, 3, 2), (37, 1, 3), (1001, 2, 1), (13, 5, 6)]
            guard info.decode != nil || type == Int(PUNA_TYPE_F32.rawValue) else {
                let pool = puna_pool_create(1)!
                let (rc, _) = runMatmul(pool, type: type, [UInt8](repeating: 0, count: Int(info.type_size)), rows: 1, cols: block, [Float](repeating: 0, count: block), tokens: 1)
                XCTAssertEqual(rc, -1, "\(name) has no decoder, matmul must refuse it")
                XCTAssertEqual(puna_matmul_supports(Int32(type)), 0)
                puna_pool_destroy(pool)
                continue
            }
            XCTAssertEqual(puna_matmul_supports(Int32(type)), 1, name)
            tested.append(name)
            for shape in shapes {
                let cols = shape.blocks * block, rows = shape.rows, tokens = shape.tokens
                let (blocks, w) = makeWeights(type: type, rows: rows, cols: cols, rng: &rng)!
                let x = rng.floats(cols * tokens)
                var first: [Float]? = nil
                withPools { n, pool in
                    let (rc, y) = runMatmul(pool, type: type, blocks, rows: rows, cols: cols, x, tokens: tokens)
                    XCTAssertEqual(rc, 0)
                    if let first {
                        XCTAssertTrue(first.elementsEqual(y) { $0.bitPattern == $1.bitPattern },
                                      "\(name) \(rows)x\(cols)x\(tokens): \(n) threads differ from 1")
                        return
                    }
                    first = y
                    for t in 0..<tokens {
                        for r in 0..<rows {
                            var exact = 0.0, magnitude = 0.0
                            for c in 0..<cols {
                                let p = Double(w[r * cols + c]) * Double(x[t * cols + c])
                                exact += p
                                magnitude += abs(p)
                            }
                            // f32 with 8 partial sums of cols/8 terms each: the rounding error is
                            // bounded by about (cols/8 + 4) * 2^-24 * sum|w x|.
                            let err = abs(Double(y[t * rows + r]) - exact)
                            if err > (Double(cols) / 8 + 4) * 0x1p-24 * magnitude + 1e-30 {
                                XCTFail("\(name) \(rows)x\(cols) token \(t) row \(r): \(y[t * rows + r]) vs \(exact)")
                                return
                            }
                        }
                    }
                }
            }
        }
        XCTAssertTrue(tested.contains("f32"))
        print("matmul tested types: \(tested.joined(separator: " "))")
    }

    /// f16 weights are converted by the matmul's own code: every one of the 65536 halves, as a
    /// one-column row times 1, must come out as puna_f16_to_f32 says (zero signs aside: 0 + -0 = 0).
    func testMatmulConvertsEveryHalf() {
        let pool = puna_pool_create(2)!
        defer { puna_pool_destroy(pool) }
        let halves = (0..<65536).map { UInt16($0) }
        let bytes = halves.withUnsafeBytes { Array($0) }
        let (rc, y) = runMatmul(pool, type: Int(PUNA_TYPE_F16.rawValue), bytes, rows: 65536, cols: 1, [1], tokens: 1)
        XCTAssertEqual(rc, 0)
        for h in halves {
            let want = puna_f16_to_f32(h), got = y[Int(h)]
            if !(got == want || (got.isNaN && want.isNaN)) {
                XCTFail(String(format: "half 0x%04x: %g, want %g", h, got, want))
                return
            }
        }
    }

    func testMatmulRejectsPartialBlocksAndBadTypes() {
        let pool = puna_pool_create(2)!
        defer { puna_pool_destroy(pool) }
        var y = [Float](repeating: 0, count: 4)
        let x = [Float](repeating: 1, count: 64)
        let w = [UInt8](repeating: 0, count: 4096)
        XCTAssertEqual(puna_matmul(pool, 99, w, 1, 32, x, 1, &y), -1)
        XCTAssertEqual(puna_matmul(pool, -1, w, 1, 32, x, 1, &y), -1)
        XCTAssertEqual(puna_matmul_supports(99), 0)
        if typeInfo(Int(PUNA_TYPE_Q8_0.rawValue)).decode != nil {
            XCTAssertEqual(puna_matmul(pool, Int32(PUNA_TYPE_Q8_0.rawValue), w, 1, 33, x, 1, &y), -1, "33 is not a whole number of q8_0 blocks")
        }
        XCTAssertEqual(puna_matmul(pool, Int32(PUNA_TYPE_F32.rawValue), w, 0, 32, x, 1, &y), 0)
        puna_kernels_set_reference_only(1)
        XCTAssertEqual(String(cString: puna_matmul_kernel_name(Int32(PUNA_TYPE_F32.rawValue))), "reference")
        puna_kernels_set_reference_only(0)
    }

    // MARK: element-wise

    func testRMSNormMatchesNaiveAndMayAliasInput() {
        var rng = Rng(state: 7)
        for n in [1, 3, 17, 4097] {
            let x = rng.floats(n, 3), weight = rng.floats(n, 2)
            let eps: Float = 1e-5
            let meanSquare = x.reduce(0.0) { $0 + Double($1) * Double($1) } / Double(n)
            let inv = 1 / (meanSquare + Double(eps)).squareRoot()
            var out = [Float](repeating: .nan, count: n)
            puna_rmsnorm(&out, x, weight, Int64(n), eps)
            var unweighted = [Float](repeating: .nan, count: n)
            puna_rmsnorm(&unweighted, x, nil, Int64(n), eps)
            for i in 0..<n {
                let exact = Double(x[i]) * inv * Double(weight[i])
                XCTAssertEqual(Double(out[i]), exact, accuracy: 1e-6 * abs(exact) + 1e-12, "n \(n) i \(i)")
                XCTAssertEqual(Double(unweighted[i]), Double(x[i]) * inv, accuracy: 1e-6 * abs(Double(x[i]) * inv) + 1e-12)
            }
            var inPlace = x
            inPlace.withUnsafeMutableBufferPointer { puna_rmsnorm($0.baseAddress, $0.baseAddress, weight, Int64(n), eps) }
            XCTAssertEqual(inPlace, out)
        }
    }

    func naiveRope(_ v: [Float], heads: Int, headDim: Int, ropeDims: Int, pos: Int, base: Double, factors: [Float]? = nil) -> [Double] {
        var out = v.map(Double.init)
        for h in 0..<heads {
            for i in 0..<(ropeDims / 2) {
                var theta = Double(pos) * pow(base, -Double(2 * i) / Double(ropeDims))
                if let factors { theta /= Double(factors[i]) }
                let a = Double(v[h * headDim + 2 * i]), b = Double(v[h * headDim + 2 * i + 1])
                out[h * headDim + 2 * i] = a * cos(theta) - b * sin(theta)
                out[h * headDim + 2 * i + 1] = a * sin(theta) + b * cos(theta)
            }
        }
        return out
    }

    func testRopeMatchesFormula() {
        var rng = Rng(state: 99)
        let cases: [(heads: Int, headDim: Int, ropeDims: Int, base: Float)] = [
            (1, 2, 2, 10000), (3, 8, 8, 10000), (5, 64, 64, 500000), (2, 12, 6, 10000), (4, 10, 10, 1e6),
        ]
        for c in cases {
            for pos in [0, 1, 7, 123, 4000] {
                let v = rng.floats(c.heads * c.headDim)
                var out = v
                puna_rope(&out, Int32(c.heads), Int32(c.headDim), Int32(c.ropeDims), Int32(pos), c.base)
                let exact = naiveRope(v, heads: c.heads, headDim: c.headDim, ropeDims: c.ropeDims, pos: pos, base: Double(c.base))
                // f32 angles: error grows with the angle, about pos * a few ulps.
                let tol = 1e-6 + 4e-7 * Double(pos)
                for h in 0..<c.heads {
                    for d in 0..<c.headDim {
                        let i = h * c.headDim + d
                        if d >= c.ropeDims || pos == 0 {
                            XCTAssertEqual(out[i].bitPattern, v[i].bitPattern, "untouched dim \(d) pos \(pos)")
                        } else {
                            XCTAssertEqual(Double(out[i]), exact[i], accuracy: tol, "\(c) pos \(pos) head \(h) dim \(d)")
                        }
                    }
                }
            }
        }
        // Frequency factors divide each pair's angle.
        let factors: [Float] = [1, 2, 4, 8, 40, 0.5]
        let v = rng.floats(2 * 12)
        var out = v
        puna_rope_factors(&out, 2, 12, 12, 321, 10000, factors)
        let exact = naiveRope(v, heads: 2, headDim: 12, ropeDims: 12, pos: 321, base: 10000, factors: factors)
        for i in 0..<out.count { XCTAssertEqual(Double(out[i]), exact[i], accuracy: 1e-6 + 4e-7 * 321) }
    }

    func testSwiGLUAddSoftmax() {
        var rng = Rng(state: 5)
        for n in [1, 5, 63, 1000] {
            var gate = rng.floats(n, 8), up = rng.floats(n, 2)
            gate[0] = n > 1 ? -100 : 100  // exp(100) overflows f32: silu must still go to -0, not nan
            if n > 1 { gate[1] = 100 }
            var out = [Float](repeating: .nan, count: n)
            puna_swiglu(&out, gate, up, Int64(n))
            for i in 0..<n {
                let g = Double(gate[i]), exact = g / (1 + exp(-g)) * Double(up[i])
                XCTAssertEqual(Double(out[i]), exact, accuracy: 1e-6 * abs(exact) + 1e-30, "swiglu \(i) g \(g)")
            }
            let a = rng.floats(n), b = rng.floats(n)
            var sum = [Float](repeating: .nan, count: n)
            puna_add(&sum, a, b, Int64(n))
            XCTAssertEqual(sum, zip(a, b).map { $0 + $1 })  // one correctly rounded add each

            for shift: Float in [0, 1000, -1000] {
                let logits = rng.floats(n, 20)
                var p = logits.map { $0 + shift }
                puna_softmax(&p, Int64(n))
                let m = logits.map(Double.init).max()!
                let e = logits.map { exp(Double($0) - m) }
                let total = e.reduce(0, +)
                for i in 0..<n {
                    // The shifted logits are rounded to f32 (ulp 6e-5 at 1000), which moves p by that much.
                    let tol = shift == 0 ? 1e-6 : 2e-4
                    XCTAssertEqual(Double(p[i]), e[i] / total, accuracy: tol * (e[i] / total) + 1e-12, "softmax n \(n) shift \(shift)")
                }
                XCTAssertEqual(p.reduce(0.0) { $0 + Double($1) }, 1, accuracy: 1e-5)
            }
        }
    }

    // MARK: attention

    struct AttentionCase {
        var tokens, pos0, heads, kvHeads, headDim: Int
        var f16 = false
        var padElements = 0  // extra elements per cache row, filled with nan
    }

    func naiveAttention(_ c: AttentionCase, q: [Float], k: [Float], v: [Float], rowElements: Int) -> [Double] {
        let qStride = c.heads * c.headDim
        var out = [Double](repeating: 0, count: c.tokens * qStride)
        for t in 0..<c.tokens {
            for h in 0..<c.heads {
                let kvh = h / (c.heads / c.kvHeads), n = c.pos0 + t + 1
                var scores = (0..<n).map { j -> Double in
                    var s = 0.0
                    for d in 0..<c.headDim { s += Double(q[t * qStride + h * c.headDim + d]) * Double(k[j * rowElements + kvh * c.headDim + d]) }
                    return s / Double(c.headDim).squareRoot()
                }
                let m = scores.max()!
                scores = scores.map { exp($0 - m) }
                let total = scores.reduce(0, +)
                for j in 0..<n {
                    for d in 0..<c.headDim {
                        out[t * qStride + h * c.headDim + d] += scores[j] / total * Double(v[j * rowElements + kvh * c.headDim + d])
                    }
                }
            }
        }
        return out
    }

    func testAttentionMatchesNaiveWithGQAAndOffsets() {
        var rng = Rng(state: 2024)
        let cases: [AttentionCase] = [
            AttentionCase(tokens: 1, pos0: 0, heads: 1, kvHeads: 1, headDim: 1),
            AttentionCase(tokens: 1, pos0: 0, heads: 4, kvHeads: 4, headDim: 16),
            AttentionCase(tokens: 5, pos0: 0, heads: 6, kvHeads: 2, headDim: 5),
            AttentionCase(tokens: 1, pos0: 37, heads: 8, kvHeads: 1, headDim: 24),
            AttentionCase(tokens: 7, pos0: 11, heads: 6, kvHeads: 3, headDim: 17, padElements: 3),
            AttentionCase(tokens: 3, pos0: 100, heads: 4, kvHeads: 2, headDim: 64),
            AttentionCase(tokens: 4, pos0: 9, heads: 6, kvHeads: 2, headDim: 9, f16: true),
            AttentionCase(tokens: 2, pos0: 50, heads: 8, kvHeads: 4, headDim: 32, f16: true, padElements: 5),
        ]
        for c in cases {
            let positions = c.pos0 + c.tokens
            let capacity = positions + 4  // rows past the last position hold nan: reading them is caught
            let rowElements = c.kvHeads * c.headDim + c.padElements
            let q = rng.floats(c.tokens * c.heads * c.headDim, 2)
            var k = [Float](repeating: .nan, count: capacity * rowElements)
            var v = k
            for j in 0..<positions {
                for e in 0..<(c.kvHeads * c.headDim) {
                    k[j * rowElements + e] = rng.float(2)
                    // Every 7th dim holds tiny values: in f16 they are subnormal (below 2^-14).
                    v[j * rowElements + e] = e % 7 == 3 ? rng.float(6e-5) : rng.float()
                }
            }
            let type = c.f16 ? PUNA_TYPE_F16 : PUNA_TYPE_F32
            var kBytes: [UInt8], vBytes: [UInt8]
            if c.f16 {
                let kh = k.map { puna_f32_to_f16($0) }, vh = v.map { puna_f32_to_f16($0) }
                k = kh.map { puna_f16_to_f32($0) }  // the reference sees what the cache holds
                v = vh.map { puna_f16_to_f32($0) }
                kBytes = kh.withUnsafeBytes { Array($0) }
                vBytes = vh.withUnsafeBytes { Array($0) }
            } else {
                kBytes = k.withUnsafeBytes { Array($0) }
                vBytes = v.withUnsafeBytes { Array($0) }
            }
            let rowBytes = Int64(rowElements * (c.f16 ? 2 : 4))
            let exact = naiveAttention(c, q: q, k: k, v: v, rowElements: rowElements)
            var first: [Float]? = nil
            withPools { n, pool in
                for useOwnScratch in [false, true] {
                    let nCtx = positions + 3
                    var scratch = [Float](repeating: 0, count: Int(n) * nCtx)
                    var out = [Float](repeating: .nan, count: q.count)
                    let rc = kBytes.withUnsafeBytes { kb in
                        vBytes.withUnsafeBytes { vb in
                            scratch.withUnsafeMutableBufferPointer { s in
                                puna_attention(pool, &out, q, Int32(type.rawValue), kb.baseAddress, vb.baseAddress,
                                               c.padElements == 0 && n % 2 == 0 ? 0 : rowBytes,
                                               Int32(c.tokens), Int32(c.pos0), Int32(c.heads), Int32(c.kvHeads), Int32(c.headDim),
                                               useOwnScratch ? s.baseAddress : nil, Int32(nCtx))
                            }
                        }
                    }
                    XCTAssertEqual(rc, 0, "\(c)")
                    if let first {
                        XCTAssertTrue(first.elementsEqual(out) { $0.bitPattern == $1.bitPattern }, "\(c): \(n) threads differ")
                        continue
                    }
                    first = out
                    for i in 0..<out.count where !(abs(Double(out[i]) - exact[i]) <= 2e-6) {
                        XCTFail("\(c) element \(i): \(out[i]) vs \(exact[i])")
                        return
                    }
                }
            }
        }
    }

    func testAttentionRejectsBadArguments() {
        let pool = puna_pool_create(2)!
        defer { puna_pool_destroy(pool) }
        let q = [Float](repeating: 0, count: 64), cache = [Float](repeating: 0, count: 64)
        var out = [Float](repeating: 0, count: 64)
        XCTAssertEqual(puna_attention(pool, &out, q, Int32(PUNA_TYPE_Q8_0.rawValue), cache, cache, 0, 1, 0, 2, 2, 4, nil, 0), -1)
        XCTAssertEqual(puna_attention(pool, &out, q, 0, cache, cache, 0, 1, 0, 3, 2, 4, nil, 0), -1, "3 heads over 2 kv heads")
        XCTAssertEqual(puna_attention(pool, &out, q, 0, cache, cache, 4, 1, 0, 2, 2, 4, nil, 0), -1, "row stride below the row")
        var scratch = [Float](repeating: 0, count: 8)
        XCTAssertEqual(puna_attention(pool, &out, q, 0, cache, cache, 0, 2, 3, 2, 2, 4, &scratch, 4), -1, "n_ctx 4 < 5 positions")
    }

    // MARK: timing (PUNA_KERNEL_BENCH=1)

    func testBenchmarkMatmulAndPool() throws {
        try XCTSkipUnless(ProcessInfo.processInfo.environment["PUNA_KERNEL_BENCH"] != nil, "set PUNA_KERNEL_BENCH=1")
        let rows = 4096, cols = 4096
        var rng = Rng(state: 1)
        let w = rng.floats(rows * cols), x = rng.floats(cols)
        var y = [Float](repeating: 0, count: rows)
        for n: Int32 in [1, 2] {
            let pool = puna_pool_create(n)!
            var best = Double.infinity
            for _ in 0..<20 {
                let t0 = puna_now_ns()
                _ = puna_matmul(pool, 0, w, Int64(rows), Int64(cols), x, 1, &y)
                best = min(best, Double(puna_now_ns() - t0) / 1e6)
            }
            let runs = 20000
            let t0 = puna_now_ns()
            for _ in 0..<runs { puna_pool_run(pool, { _, _, _ in }, nil) }
            let perRun = Double(puna_now_ns() - t0) / Double(runs) / 1e3
            print(String(format: "bench threads %d: matmul 4096x4096 f32 x 1 token best of 20 %.2f ms (%.1f GB/s); empty pool run %.2f us",
                         n, best, Double(rows * cols * 4) / best / 1e6, perRun))
            puna_pool_destroy(pool)
        }
    }
}
