/// The BPE model of `tokenizer.ggml.model` = "gpt2" (byte-level) and "gemma4" (SentencePiece-style
/// BPE over raw UTF-8 with "▁" for spaces): merges ranked by their order in `tokenizer.ggml.merges`
/// ("left right" strings), applied to each pre-tokenized word lowest rank first (leftmost on ties).
///
/// Symbols are token ids: every merge's two sides and its result must be vocabulary pieces (the
/// Hugging Face BPE model refuses a vocabulary where they are not), so a merge is a lookup of an id
/// pair in one hash table and no string is built while tokenizing.
struct BPEModel {
    let preTokenizer: PreTokenizer
    /// GPT-2 byte-level pieces; false: raw UTF-8 pieces with "▁" for space and `<0xNN>` byte tokens.
    let byteLevel: Bool
    /// A word that is itself a piece becomes that token without merging (llama3's `ignore_merges`).
    let ignoreMerges: Bool
    /// A word of newlines only that is a piece becomes that token (Gemma 4).
    let wholeNewlineWords: Bool

    private let keys: [UInt64]    // (left << 32 | right), open addressing; UInt64.max = empty
    private let ranks: [Int32]    // rank of the merge in each slot
    private let results: [Int32]  // id of the merged piece, by rank
    private let mask: Int
    /// Byte-level: the token of each byte's character (-1 if none). Otherwise the `<0xNN>` tokens.
    private let byteTokens: [Int32]

    static let mergesKey = "tokenizer.ggml.merges"

    /// Reads the merges. `find` looks a piece up by its exact bytes (-1 if absent).
    init(preTokenizer: PreTokenizer, byteLevel: Bool, ignoreMerges: Bool, merges: [GGUFValue],
         pieces: PieceTable, source: String) throws(PunaError) {
        func fail(_ message: String) -> PunaError { PunaError("\(source): \(message)") }
        let key = BPEModel.mergesKey
        self.preTokenizer = preTokenizer
        self.byteLevel = byteLevel
        self.ignoreMerges = ignoreMerges
        self.wholeNewlineWords = !byteLevel

        var capacity = 16
        while capacity < merges.count * 2 { capacity <<= 1 }
        var keys = [UInt64](repeating: UInt64.max, count: capacity)
        var ranks = [Int32](repeating: -1, count: capacity)
        var results: [Int32] = []
        results.reserveCapacity(merges.count)
        for (i, value) in merges.enumerated() {
            guard let text = value.stringBytes else { throw fail("\(key)[\(i)] is not a string") }
            func show() -> String {
                let s = String(decoding: text.prefix(80), as: UTF8.self)
                return "'\(s)'"
            }
            // "left right": the space that splits them is the first one after the first byte.
            guard text.count >= 3, let space = text[1...].firstIndex(of: 0x20), space + 1 < text.count else {
                throw fail("\(key)[\(i)] is \(show()), not two pieces separated by a space")
            }
            let left = pieces.find(Array(text[..<space]))
            let right = pieces.find(Array(text[(space + 1)...]))
            var joined = Array(text[..<space])
            joined.append(contentsOf: text[(space + 1)...])
            let merged = pieces.find(joined)
            guard left >= 0, right >= 0, merged >= 0 else {
                let missing = left < 0 ? "its left side" : right < 0 ? "its right side" : "the merged piece"
                throw fail("\(key)[\(i)] \(show()) names a piece that is not in tokenizer.ggml.tokens (\(missing))")
            }
            let k = UInt64(UInt32(left)) << 32 | UInt64(UInt32(right))
            var slot = BPEModel.hash(k) & (capacity - 1)
            var duplicate = false
            while keys[slot] != UInt64.max {
                if keys[slot] == k { duplicate = true; break }  // the first (lowest) rank wins
                slot = (slot + 1) & (capacity - 1)
            }
            results.append(merged)
            if !duplicate {
                keys[slot] = k
                ranks[slot] = Int32(i)
            }
        }
        self.keys = keys
        self.ranks = ranks
        self.results = results
        self.mask = capacity - 1

        var byteTokens = [Int32](repeating: -1, count: 256)
        for b in 0..<256 {
            if byteLevel {
                var encoded: [UInt8] = []
                ByteLevel.appendEncoded(UInt8(b), to: &encoded)
                byteTokens[b] = pieces.find(encoded)
            } else {
                let hex: [UInt8] = Array("0123456789ABCDEF".utf8)
                byteTokens[b] = pieces.find([0x3C, 0x30, 0x78, hex[b >> 4], hex[b & 15], 0x3E])
            }
        }
        self.byteTokens = byteTokens
    }

    @inline(__always) static func hash(_ k: UInt64) -> Int {
        Int(truncatingIfNeeded: (k &* 0x9E37_79B9_7F4A_7C15) >> 29)
    }

    /// The rank of merging `left` then `right`, -1 if no merge joins them.
    @inline(__always) func rank(_ left: Int32, _ right: Int32) -> Int32 {
        if left < 0 || right < 0 { return -1 }
        let k = UInt64(UInt32(left)) << 32 | UInt64(UInt32(right))
        var slot = BPEModel.hash(k) & mask
        while true {
            let stored = keys[slot]
            if stored == k { return ranks[slot] }
            if stored == UInt64.max { return -1 }
            slot = (slot + 1) & mask
        }
    }

    @inline(__always) func result(ofRank r: Int32) -> Int32 { results[Int(r)] }

    // MARK: tokenizing

    /// Appends the tokens of one text fragment (no special tokens in it).
    func tokenize(_ fragment: ArraySlice<UInt8>, pieces: PieceTable, into output: inout [Int32]) {
        var text: [UInt8]
        if byteLevel {
            text = Array(fragment)
        } else {
            // SentencePiece-style: spaces become "▁" before anything else
            text = []
            text.reserveCapacity(fragment.count + fragment.count / 4)
            for b in fragment {
                if b == 0x20 { text.append(contentsOf: [0xE2, 0x96, 0x81]) } else { text.append(b) }
            }
        }
        if text.isEmpty { return }
        var cps: [UInt32] = []
        var offsets: [Int32] = []
        cps.reserveCapacity(text.count)
        offsets.reserveCapacity(text.count + 1)
        text.withUnsafeBufferPointer { UnicodeClass.decode($0, codePoints: &cps, offsets: &offsets) }
        var classes = [UInt8](repeating: 0, count: cps.count)
        for i in 0..<cps.count { classes[i] = UnicodeClass.of(cps[i]) }
        var ends: [Int32] = []
        var scratch: [Int32] = []
        cps.withUnsafeBufferPointer { c in
            classes.withUnsafeBufferPointer { k in
                preTokenizer.split(c, classes: k, into: &ends, scratch: &scratch)
            }
        }
        var session = WordSession()
        text.withUnsafeBufferPointer { bytes in
            var start = 0
            for e in ends {
                let a = Int(offsets[start]), b = Int(offsets[Int(e)])
                session.tokenize(UnsafeBufferPointer(rebasing: bytes[a..<b]), model: self, pieces: pieces, into: &output)
                start = Int(e)
            }
        }
    }

    /// Working memory for the words of one fragment.
    struct WordSession {
        var symStart: [Int32] = []
        var symLength: [Int32] = []
        var symID: [Int32] = []
        var prev: [Int32] = []
        var next: [Int32] = []
        var heap = MergeHeap()
        var encoded: [UInt8] = []

        mutating func tokenize(_ word: UnsafeBufferPointer<UInt8>, model: BPEModel, pieces: PieceTable,
                               into output: inout [Int32]) {
            if word.isEmpty { return }
            let base = word.baseAddress!
            if model.byteLevel {
                if model.ignoreMerges {
                    encoded.removeAll(keepingCapacity: true)
                    for b in word { ByteLevel.appendEncoded(b, to: &encoded) }
                    let id = encoded.withUnsafeBufferPointer { pieces.find($0.baseAddress!, $0.count) }
                    if id >= 0 { output.append(id); return }
                }
            } else if model.wholeNewlineWords && !word.contains(where: { $0 != 0x0A }) {
                let id = pieces.find(base, word.count)
                if id >= 0 { output.append(id); return }
            }

            symStart.removeAll(keepingCapacity: true)
            symLength.removeAll(keepingCapacity: true)
            symID.removeAll(keepingCapacity: true)
            if model.byteLevel {
                for i in 0..<word.count {
                    symStart.append(Int32(i))
                    symLength.append(1)
                    symID.append(model.byteTokens[Int(word[i])])
                }
            } else {
                var i = 0
                while i < word.count {
                    let lead = word[i]
                    let want = lead < 0xC0 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4
                    let n = min(want, word.count - i)
                    symStart.append(Int32(i))
                    symLength.append(Int32(n))
                    symID.append(pieces.find(base + i, n))
                    i += n
                }
            }
            let count = symID.count
            prev.removeAll(keepingCapacity: true)
            next.removeAll(keepingCapacity: true)
            for i in 0..<count {
                prev.append(Int32(i) - 1)
                next.append(i + 1 < count ? Int32(i + 1) : -1)
            }
            heap.removeAll()
            for i in 1..<max(count, 1) {
                let r = model.rank(symID[i - 1], symID[i])
                if r >= 0 { heap.push(MergeCandidate(rank: r, left: Int32(i - 1), right: Int32(i))) }
            }
            while let top = heap.popMin() {
                let l = Int(top.left), r = Int(top.right)
                // stale: a side was absorbed, or it changed since the pair was queued
                if symLength[l] == 0 || symLength[r] == 0 || next[l] != top.right { continue }
                if model.rank(symID[l], symID[r]) != top.rank { continue }
                symID[l] = model.result(ofRank: top.rank)
                symLength[l] += symLength[r]
                symLength[r] = 0
                next[l] = next[r]
                if next[r] >= 0 { prev[Int(next[r])] = top.left }
                if prev[l] >= 0 {
                    let rk = model.rank(symID[Int(prev[l])], symID[l])
                    if rk >= 0 { heap.push(MergeCandidate(rank: rk, left: prev[l], right: top.left)) }
                }
                if next[l] >= 0 {
                    let rk = model.rank(symID[l], symID[Int(next[l])])
                    if rk >= 0 { heap.push(MergeCandidate(rank: rk, left: top.left, right: next[l])) }
                }
            }
            var i: Int32 = 0
            while i >= 0 {
                let id = symID[Int(i)]
                if id >= 0 {
                    output.append(id)
                } else {
                    // not a piece: its bytes, as byte tokens where the vocabulary has them
                    let s = Int(symStart[Int(i)]), n = Int(symLength[Int(i)])
                    for k in s..<(s + n) {
                        let t = model.byteTokens[Int(word[k])]
                        if t >= 0 { output.append(t) }
                    }
                }
                i = next[Int(i)]
            }
        }
    }
}

struct MergeCandidate {
    var rank: Int32
    var left: Int32
    var right: Int32

    /// Lower rank first; on equal ranks the leftmost pair.
    @inline(__always) func before(_ other: MergeCandidate) -> Bool {
        rank < other.rank || (rank == other.rank && left < other.left)
    }
}

struct MergeHeap {
    private var items: [MergeCandidate] = []

    mutating func removeAll() { items.removeAll(keepingCapacity: true) }

    mutating func push(_ item: MergeCandidate) {
        items.append(item)
        var child = items.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            if !items[child].before(items[parent]) { break }
            items.swapAt(child, parent)
            child = parent
        }
    }

    mutating func popMin() -> MergeCandidate? {
        guard let last = items.popLast() else { return nil }
        if items.isEmpty { return last }
        let top = items[0]
        items[0] = last
        var parent = 0
        let n = items.count
        while true {
            let left = 2 * parent + 1
            if left >= n { break }
            var best = left
            if left + 1 < n && items[left + 1].before(items[left]) { best = left + 1 }
            if !items[best].before(items[parent]) { break }
            items.swapAt(best, parent)
            parent = best
        }
        return top
    }
}
