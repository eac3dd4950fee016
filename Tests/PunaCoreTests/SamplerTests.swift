import Foundation
import PunaCore
import XCTest

/// Sampler tests. The expected distributions come from `ReferenceChain` below: a deliberately
/// naive re-statement of llama.cpp's chain (full sort, logit-space min-p, Double math, no
/// shortcuts), so the fast path (heap top-k, min-p before top-p, CPuna softmax) is checked against
/// code that shares none of its tricks.
final class SamplerTests: XCTestCase {
    /// Deterministic test data, independent of the sampler's own PRNG.
    struct TestRandom {
        var state: UInt64
        mutating func next() -> UInt64 {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return state >> 11
        }
        mutating func float(_ lo: Float, _ hi: Float) -> Float {
            lo + (hi - lo) * Float(Double(next()) / Double(1 << 53))
        }
        mutating func logits(_ n: Int, spread: Float = 8) -> [Float] {
            (0..<n).map { _ in float(-spread, spread) }
        }
    }

    /// llama.cpp's default chain, written the slow and obvious way.
    enum ReferenceChain {
        static func distribution(_ logitsIn: [Float], _ s: SamplerSettings, history: [Int32]) -> [Int32: Double] {
            var logits = logitsIn.map(Double.init)
            if s.repeatPenalty != 1 && s.repeatLastN != 0 {
                let window = s.repeatLastN < 0 ? history : Array(history.suffix(s.repeatLastN))
                for t in Set(window) where t >= 0 && Int(t) < logits.count {
                    let l = logits[Int(t)]
                    logits[Int(t)] = l <= 0 ? l * Double(s.repeatPenalty) : l / Double(s.repeatPenalty)
                }
            }
            if s.temperature <= 0 {
                let best = logits.indices.max { logits[$0] < logits[$1] || (logits[$0] == logits[$1] && $0 > $1) }!
                return [Int32(best): 1]
            }
            var cands = logits.indices.map { (id: $0, logit: logits[$0]) }
            cands.sort { $0.logit > $1.logit || ($0.logit == $1.logit && $0.id < $1.id) }
            if s.topK > 0 { cands = Array(cands.prefix(s.topK)) }
            if s.topP < 1 {
                let m = cands[0].logit
                let z = cands.reduce(0.0) { $0 + exp($1.logit - m) }
                var cum = 0.0
                for i in cands.indices {
                    cum += exp(cands[i].logit - m) / z
                    if cum >= Double(s.topP) { cands = Array(cands.prefix(i + 1)); break }
                }
            }
            if s.minP > 0 {
                let threshold = cands[0].logit + log(Double(s.minP))
                let kept = cands.filter { $0.logit >= threshold }
                cands = kept.isEmpty ? [cands[0]] : kept
            }
            let scaled = cands.map { $0.logit / Double(s.temperature) }
            let m = scaled.max()!
            let z = scaled.reduce(0.0) { $0 + exp($1 - m) }
            var out: [Int32: Double] = [:]
            for (c, l) in zip(cands, scaled) { out[Int32(c.id)] = exp(l - m) / z }
            return out
        }
    }

    func sample(_ sampler: inout Sampler, _ logits: [Float]) -> Int32 {
        var copy = logits
        return copy.withUnsafeMutableBufferPointer { sampler.sample($0) }
    }

    func distribution(_ sampler: inout Sampler, _ logits: [Float]) -> [Int32: Float] {
        var copy = logits
        let cands = copy.withUnsafeMutableBufferPointer { sampler.distribution($0) }
        var out: [Int32: Float] = [:]
        for c in cands { out[c.id] = c.probability }
        return out
    }

    // MARK: PRNG

    func testPRNGMatchesIndependentImplementation() {
        // Produced by a separate Python implementation of splitmix64 seeding + xoshiro256**
        // (whose splitmix64(0) first output, 0xe220a8397b1dcdaf, is the published value).
        let expected: [UInt64: [UInt64]] = [
            0: [0x99ec5f36cb75f2b4, 0xbf6e1f784956452a, 0x1a5f849d4933e6e0, 0x6aa594f1262d2d2c],
            42: [0x15780b2e0c2ec716, 0x6104d9866d113a7e, 0xae17533239e499a1, 0xecb8ad4703b360a1],
            UInt64.max: [0x8f5520d52a7ead08, 0xc476a018caa1802d, 0x81de31c0d260469e, 0xbf658d7e065f3c2f],
        ]
        for (seed, outputs) in expected {
            var rng = Xoshiro256StarStar(seed: seed)
            XCTAssertEqual((0..<4).map { _ in rng.next() }, outputs, "seed \(seed)")
        }
        var rng = Xoshiro256StarStar(seed: 7)
        for _ in 0..<10_000 {
            let u = rng.nextUnitDouble()
            XCTAssert(u >= 0 && u < 1)
        }
    }

    // MARK: greedy

    func testGreedyPicksArgmaxLowestIdOnTies() {
        var s = Sampler(.greedy)
        XCTAssertEqual(sample(&s, [0.1, 3.0, -2, 2.9]), 1)
        XCTAssertEqual(sample(&s, [1, 5, 5, 2]), 1, "ties go to the lowest id")
        XCTAssertEqual(sample(&s, [.nan, -1, .nan, -0.5]), 3, "NaN never wins")
        XCTAssertEqual(sample(&s, [-.infinity, -.infinity]), 0)
        var t = TestRandom(state: 1)
        for _ in 0..<50 {
            let logits = t.logits(1000)
            XCTAssertEqual(Int(sample(&s, logits)), logits.indices.max { logits[$0] < logits[$1] }!)
        }
        // Temperature 0 with the other filters on is still argmax.
        var s2 = Sampler(SamplerSettings(temperature: 0, repeatPenalty: 1))
        XCTAssertEqual(sample(&s2, [0.5, 0.2, 0.9, 0.1]), 2)
    }

    func testTopKOneEqualsGreedy() {
        var t = TestRandom(state: 2)
        var greedy = Sampler(.greedy)
        var topOne = Sampler(SamplerSettings(temperature: 1.5, topK: 1, topP: 1, minP: 0, repeatPenalty: 1, seed: 99))
        for _ in 0..<200 {
            let logits = t.logits(500)
            XCTAssertEqual(sample(&topOne, logits), sample(&greedy, logits))
        }
    }

    // MARK: determinism

    func testSameSeedSameSequence() {
        var t = TestRandom(state: 3)
        let rows = (0..<300).map { _ in t.logits(2000, spread: 3) }
        func run(seed: UInt64) -> [Int32] {
            var s = Sampler(SamplerSettings(temperature: 1.0, seed: seed))
            return rows.map { row in
                let token = sample(&s, row)
                s.accept(token)
                return token
            }
        }
        let a = run(seed: 1234), b = run(seed: 1234), c = run(seed: 1235)
        XCTAssertEqual(a, b)
        XCTAssertNotEqual(a, c, "another seed should give another sequence")
        XCTAssertGreaterThan(Set(a).count, 50, "temperature 1 over 2000 tokens should not be near-greedy")

        // reset() restarts both the random stream and the penalty history.
        var s = Sampler(SamplerSettings(temperature: 1.0, seed: 1234))
        let first = rows.map { row -> Int32 in let tok = sample(&s, row); s.accept(tok); return tok }
        s.reset()
        let second = rows.map { row -> Int32 in let tok = sample(&s, row); s.accept(tok); return tok }
        XCTAssertEqual(first, second)
        XCTAssertEqual(first, a)
    }

    func testLogitsAreLeftUnchanged() {
        var t = TestRandom(state: 4)
        var s = Sampler(SamplerSettings(repeatPenalty: 1.3, seed: 5))
        for tok: Int32 in [3, 7, 7, 11] { s.accept(tok) }
        var logits = t.logits(100)
        let before = logits
        _ = logits.withUnsafeMutableBufferPointer { s.sample($0) }
        XCTAssertEqual(logits, before)
        var g = Sampler(SamplerSettings(temperature: 0, repeatPenalty: 1.3))
        g.accept(3)
        _ = logits.withUnsafeMutableBufferPointer { g.sample($0) }
        XCTAssertEqual(logits, before)
    }

    // MARK: agreement with the reference chain

    func testDistributionMatchesReferenceChain() {
        var t = TestRandom(state: 5)
        let configs: [SamplerSettings] = [
            SamplerSettings(),
            SamplerSettings(temperature: 1, topK: 0, topP: 0.9, minP: 0),
            SamplerSettings(temperature: 0.7, topK: 0, topP: 1, minP: 0.1),
            SamplerSettings(temperature: 1.3, topK: 0, topP: 0.8, minP: 0.02),
            SamplerSettings(temperature: 0.5, topK: 10, topP: 1, minP: 0),
            SamplerSettings(temperature: 2, topK: 100, topP: 0.5, minP: 0.2, repeatPenalty: 1.5, repeatLastN: 8),
            SamplerSettings(temperature: 1, topK: 0, topP: 1, minP: 0, repeatPenalty: 1.2, repeatLastN: -1),
            SamplerSettings(temperature: 1, topK: 5, topP: 1, minP: 1.5),  // min-p above 1 keeps only the best
        ]
        for (ci, settings) in configs.enumerated() {
            for trial in 0..<20 {
                let logits = t.logits(trial % 2 == 0 ? 300 : 3000, spread: Float(1 + trial % 5))
                let history = (0..<40).map { _ in Int32(t.next() % 300) }
                var s = Sampler(settings)
                for tok in history { s.accept(tok) }
                let got = distribution(&s, logits)
                let want = ReferenceChain.distribution(logits, settings, history: history)
                XCTAssertEqual(Set(got.keys), Set(want.keys), "config \(ci) trial \(trial)")
                for (id, p) in want {
                    XCTAssertEqual(Double(got[id] ?? -1), p, accuracy: 1e-5, "config \(ci) trial \(trial) token \(id)")
                }
            }
        }
    }

    // MARK: statistics of the draw

    /// Draw `n` tokens and compare frequencies with `want` (the renormalised probabilities):
    /// tokens outside `want` must never appear, the others within 5 standard deviations.
    func checkFrequencies(_ settings: SamplerSettings, _ logits: [Float], want: [Int32: Double],
                          n: Int = 10_000, file: StaticString = #filePath, line: UInt = #line) {
        var s = Sampler(settings)
        var counts: [Int32: Int] = [:]
        for _ in 0..<n { counts[sample(&s, logits), default: 0] += 1 }
        for (id, _) in counts where want[id] == nil {
            XCTFail("token \(id) drawn although excluded", file: file, line: line)
        }
        for (id, p) in want {
            let freq = Double(counts[id] ?? 0) / Double(n)
            let sigma = (p * (1 - p) / Double(n)).squareRoot()
            XCTAssertEqual(freq, p, accuracy: 5 * sigma + 1e-9, "token \(id)", file: file, line: line)
        }
    }

    func testTopPExcludesTailAndRenormalises() {
        // Probabilities 0.4 0.3 0.15 0.1 0.05: top-p 0.8 keeps the first three (0.4+0.3 < 0.8 <= 0.85).
        let probs = [0.4, 0.3, 0.15, 0.1, 0.05]
        let logits = probs.map { Float(log($0)) }
        let settings = SamplerSettings(temperature: 1, topK: 0, topP: 0.8, minP: 0, repeatPenalty: 1, seed: 11)
        checkFrequencies(settings, logits, want: [0: 0.4 / 0.85, 1: 0.3 / 0.85, 2: 0.15 / 0.85])
        var s = Sampler(settings)
        XCTAssertEqual(Set(distribution(&s, logits).keys), [0, 1, 2])
    }

    func testMinPExcludesUnlikelyTokens() {
        // min-p 0.3: keep p >= 0.3 * 0.4 = 0.12, i.e. tokens 0, 1, 2.
        let probs = [0.4, 0.3, 0.15, 0.1, 0.05]
        let logits = probs.map { Float(log($0)) }
        let settings = SamplerSettings(temperature: 1, topK: 0, topP: 1, minP: 0.3, repeatPenalty: 1, seed: 12)
        checkFrequencies(settings, logits, want: [0: 0.4 / 0.85, 1: 0.3 / 0.85, 2: 0.15 / 0.85])
    }

    func testTopKAndTemperatureFrequencies() {
        // top-k 2 then temperature 0.5 squares the odds: 0.4^2 : 0.3^2.
        let probs = [0.3, 0.4, 0.15, 0.1, 0.05]
        let logits = probs.map { Float(log($0)) }
        let settings = SamplerSettings(temperature: 0.5, topK: 2, topP: 1, minP: 0, repeatPenalty: 1, seed: 13)
        let z = 0.16 + 0.09
        checkFrequencies(settings, logits, want: [1: 0.16 / z, 0: 0.09 / z])
        // Unfiltered temperature 1 reproduces the distribution itself.
        checkFrequencies(SamplerSettings(temperature: 1, topK: 0, topP: 1, minP: 0, repeatPenalty: 1, seed: 14),
                         logits, want: [0: 0.3, 1: 0.4, 2: 0.15, 3: 0.1, 4: 0.05], n: 20_000)
    }

    func testMaskedTokensNeverDrawn() {
        var logits = [Float](repeating: -.infinity, count: 50)
        logits[7] = 0
        logits[30] = 0
        let settings = SamplerSettings(temperature: 1, topK: 0, topP: 1, minP: 0, repeatPenalty: 1, seed: 15)
        checkFrequencies(settings, logits, want: [7: 0.5, 30: 0.5], n: 4000)
    }

    // MARK: repetition penalty

    func testRepetitionPenaltyChangesGreedyChoice() {
        let settings = SamplerSettings(temperature: 0, repeatPenalty: 1.1, repeatLastN: 64)
        var s = Sampler(settings)
        let positive: [Float] = [2.0, 1.9, 0.5]
        XCTAssertEqual(sample(&s, positive), 0)
        s.accept(0)
        XCTAssertEqual(sample(&s, positive), 1, "2.0 / 1.1 = 1.82 < 1.9")
        // Penalised once however often it repeats: a second 0 changes nothing, a 1 flips back.
        s.accept(0)
        XCTAssertEqual(sample(&s, positive), 1)
        var plain = Sampler(SamplerSettings(temperature: 1, topK: 0, topP: 1, minP: 0, repeatPenalty: 1.1))
        plain.accept(0)
        plain.accept(0)
        var probe = positive
        let d = probe.withUnsafeMutableBufferPointer { plain.distribution($0) }
        XCTAssertEqual(d.first { $0.id == 0 }?.logit, Float(2.0) / Float(1.1), "divided once, not twice")
        s.accept(1)
        XCTAssertEqual(sample(&s, positive), 0, "both penalised: 1.818 > 1.727")

        // Negative logits are multiplied, so they also become less likely.
        var n = Sampler(settings)
        let negative: [Float] = [-1.0, -1.05, -3]
        XCTAssertEqual(sample(&n, negative), 0)
        n.accept(0)
        XCTAssertEqual(sample(&n, negative), 1, "-1.0 * 1.1 = -1.1 < -1.05")
    }

    func testRepetitionPenaltyWindow() {
        let logits: [Float] = [2.0, 1.9, 0, 0, 0, 0, 0]
        var s = Sampler(SamplerSettings(temperature: 0, repeatPenalty: 1.1, repeatLastN: 2))
        s.accept(0)
        XCTAssertEqual(sample(&s, logits), 1)
        s.accept(5)
        s.accept(6)
        XCTAssertEqual(sample(&s, logits), 0, "token 0 has left the window of 2")
        // Long histories keep working after the buffer trims itself.
        for i in 0..<1000 { s.accept(Int32(2 + i % 5)) }
        s.accept(0)
        XCTAssertEqual(sample(&s, logits), 1)

        var whole = Sampler(SamplerSettings(temperature: 0, repeatPenalty: 1.1, repeatLastN: -1))
        whole.accept(0)
        for _ in 0..<500 { whole.accept(4) }
        XCTAssertEqual(sample(&whole, logits), 1, "-1 looks at everything since reset")
        whole.reset()
        XCTAssertEqual(sample(&whole, logits), 0)

        var off = Sampler(SamplerSettings(temperature: 0, repeatPenalty: 1.1, repeatLastN: 0))
        off.accept(0)
        XCTAssertEqual(sample(&off, logits), 0, "repeatLastN 0 turns the penalty off")
        // Ids outside the vocabulary are ignored rather than trapping.
        var odd = Sampler(SamplerSettings(temperature: 0, repeatPenalty: 1.1))
        odd.accept(-5)
        odd.accept(1_000_000)
        XCTAssertEqual(sample(&odd, logits), 0)
    }

    // MARK: cost

    func threadCPUNanoseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    func testSpeedOnLlamaSizedVocabulary() {
        var t = TestRandom(state: 6)
        // Flat rows (uniform logits) are the worst case for top-p without top-k: the kept set
        // runs to thousands of tokens. Peaked rows (a few dozen clear favourites over noise) look
        // more like a language model's output.
        let flat = (0..<8).map { _ in t.logits(32000, spread: 10) }
        let peaked = (0..<8).map { _ -> [Float] in
            var row = t.logits(32000, spread: 3)
            for _ in 0..<30 { row[Int(t.next() % 32000)] += t.float(6, 14) }
            return row
        }
        var rows = flat
        func timePerSample(_ settings: SamplerSettings, _ count: Int) -> Double {
            var s = Sampler(settings)
            for i in 0..<64 { s.accept(Int32(i * 97)) }
            var buffers = rows
            // Thread CPU time, not wall time: the build machine is shared and often loaded.
            let start = threadCPUNanoseconds()
            for i in 0..<count {
                let tok = buffers[i % buffers.count].withUnsafeMutableBufferPointer { s.sample($0) }
                s.accept(tok)
            }
            return Double(threadCPUNanoseconds() - start) / Double(count) / 1000
        }
        let defaults = timePerSample(SamplerSettings(seed: 1), 2000)
        let noTopK = timePerSample(SamplerSettings(topK: 0, seed: 1), 300)
        let noTopKNoMinP = timePerSample(SamplerSettings(topK: 0, minP: 0, seed: 1), 100)
        let greedy = timePerSample(.greedy, 2000)
        rows = peaked
        let peakedDefaults = timePerSample(SamplerSettings(seed: 1), 2000)
        let peakedNoTopKNoMinP = timePerSample(SamplerSettings(topK: 0, minP: 0, seed: 1), 300)
        func f(_ x: Double) -> String { String(format: "%.1f", x) }
        print("sampler CPU µs/token at V=32000, flat logits: defaults \(f(defaults)), top-k off \(f(noTopK)), "
              + "top-k and min-p off \(f(noTopKNoMinP)), greedy \(f(greedy)); peaked logits: defaults "
              + "\(f(peakedDefaults)), top-k and min-p off \(f(peakedNoTopKNoMinP))")
        // Generous bound (shared 2-core machine); the default chain should take tens of µs.
        XCTAssertLessThan(defaults, 2000)
    }
}
