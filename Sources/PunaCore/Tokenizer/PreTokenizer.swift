/// The pre-tokenizers of byte-level BPE vocabularies, chosen by `tokenizer.ggml.pre`: the text is cut
/// into words that BPE merges never cross. Each one is a list of stages; a stage finds its pattern's
/// matches in every piece left by the previous stage, leftmost first, and cuts that piece into the
/// matches and the text between them (the Hugging Face "Split" with isolated matches).
///
/// There is no regular-expression engine in Embedded Swift, so each pattern is written out by hand
/// as a matcher over code points and their Unicode classes, with the regex semantics it replaces
/// (greedy quantifiers, backtracking into `\s+(?!\S)`, first alternative wins) spelled out beside it.
struct PreTokenizer {
    /// One pattern. Each case's comment gives the regular expression it implements.
    enum Stage {
        /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
        case gpt2
        /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,maxDigits}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`;
        /// with `marks`, `[\p{L}\p{M}]+` for the letters and `[^\s\p{L}\p{M}\p{N}]` for the others (Qwen3.5).
        case llama3(maxDigits: Int, marks: Bool)
        /// The o200k pattern: `[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|…)?
        /// |[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|…)?|\p{N}{1,3}
        /// | ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+`
        case gpt4o
        /// `[\p{P}\$\+<=>\^~\|]+`, with the backtick too when `backtick` (Falcon).
        case punctuationRun(backtick: Bool)
        /// `[0-9][0-9][0-9]`
        case threeASCIIDigits
        /// `\p{N}+`
        case numberRun
        /// `\p{N}`
        case singleNumber
        /// `[\r\n]`
        case singleNewline
        /// `\s?[A-Za-zµÀ-ÖØ-ö…]+` (DeepSeek LLM's cased-letter list, `deepseekLetters`)
        case deepseekLetters
        /// `\s?[!-/:-~！-／：-～‘-‟　-。]+`
        case deepseekPunctuation
        /// `\s+$`
        case trailingSpace
        /// `[一-龥ࠀ-一가-퟿]+`
        case cjkRun
        /// `\s?\p{L}+`
        case spaceLetters
        /// `\s?\p{P}+`
        case spacePunctuation
        /// ` ?[^(\s|.,!?…。，、।۔،)]+` (BLOOM)
        case bloom
        /// `[^\n]+|[\n]+` (Gemma 4, on text whose spaces are already "▁")
        case newlineRuns
    }

    let name: String
    let stages: [Stage]

    /// The names accepted for `tokenizer.ggml.pre`, as llama.cpp reads them.
    static let supportedNames: [String] = [
        "default", "llama3", "llama-v3", "llama-bpe", "falcon3", "dbrx", "smaug-bpe", "qwen2",
        "deepseek-r1-qwen", "stablelm2", "qwen35", "smollm", "starcoder", "refact", "command-r",
        "codeshell", "exaone", "gpt-2", "phi-2", "mpt", "olmo", "jais", "deepseek-llm",
        "deepseek-coder", "falcon", "gpt-4o", "bloom", "poro-chat", "gpt3-finnish", "gemma4",
    ]

    /// The pre-tokenizer of a `tokenizer.ggml.pre` value (nil or empty: llama.cpp's "default").
    static func named(_ name: String?) -> PreTokenizer? {
        let gpt2Default: [Stage] = [.punctuationRun(backtick: false), .gpt2, .numberRun, .threeASCIIDigits]
        guard let name, !name.isEmpty else { return PreTokenizer(name: "default", stages: gpt2Default) }
        let stages: [Stage]
        switch name {
        case "default":
            stages = gpt2Default
        case "llama3", "llama-v3", "llama-bpe", "falcon3", "dbrx", "smaug-bpe":
            stages = [.llama3(maxDigits: 3, marks: false)]
        case "qwen2", "deepseek-r1-qwen", "stablelm2":
            stages = [.llama3(maxDigits: 1, marks: false)]
        case "qwen35":
            stages = [.llama3(maxDigits: 1, marks: true)]
        case "smollm", "starcoder", "refact", "command-r", "codeshell", "exaone":
            stages = [.singleNumber, .gpt2]
        case "gpt-2", "phi-2", "mpt", "olmo", "jais":
            stages = [.gpt2]
        case "deepseek-llm":
            stages = [.singleNewline, .deepseekLetters, .deepseekPunctuation, .trailingSpace, .cjkRun, .numberRun]
        case "deepseek-coder":
            stages = [.singleNewline, .spaceLetters, .spacePunctuation, .cjkRun, .singleNumber]
        case "falcon":
            stages = [.punctuationRun(backtick: true), .gpt2, .threeASCIIDigits]
        case "gpt-4o":
            stages = [.gpt4o]
        case "bloom", "poro-chat", "gpt3-finnish":
            stages = [.bloom]
        case "gemma4":
            stages = [.newlineRuns]
        default:
            return nil
        }
        return PreTokenizer(name: name, stages: stages)
    }

    /// Cuts `cps` into words: returns the end index (in code points) of each word, in order.
    func split(_ cps: UnsafeBufferPointer<UInt32>, classes: UnsafeBufferPointer<UInt8>, into ends: inout [Int32],
               scratch: inout [Int32]) {
        ends.removeAll(keepingCapacity: true)
        if cps.isEmpty { return }
        ends.append(Int32(cps.count))
        for stage in stages {
            swap(&ends, &scratch)
            ends.removeAll(keepingCapacity: true)
            var start = 0
            for endValue in scratch {
                let end = Int(endValue)
                var gapStart = start
                var p = start
                while p < end {
                    let n = PreTokenizer.match(stage, cps, classes, p, end)
                    if n > 0 {
                        if gapStart < p { ends.append(Int32(p)) }
                        p += n
                        ends.append(Int32(p))
                        gapStart = p
                    } else {
                        p += 1
                    }
                }
                if gapStart < end { ends.append(Int32(end)) }
                start = end
            }
        }
    }

    // MARK: matchers: the length of the match at `p` (within the piece ending at `end`), 0 if none

    typealias Flags = UnicodeClass

    @inline(__always) static func has(_ classes: UnsafeBufferPointer<UInt8>, _ i: Int, _ f: UInt8) -> Bool {
        classes[i] & f != 0
    }

    static func match(_ stage: Stage, _ c: UnsafeBufferPointer<UInt32>, _ k: UnsafeBufferPointer<UInt8>,
                      _ p: Int, _ end: Int) -> Int {
        switch stage {
        case .gpt2:
            return gpt2(c, k, p, end)
        case .llama3(let maxDigits, let marks):
            return llama3(c, k, p, end, maxDigits: maxDigits, marks: marks)
        case .gpt4o:
            return gpt4o(c, k, p, end)
        case .punctuationRun(let backtick):
            var q = p
            while q < end {
                let x = c[q]
                let extra = x == 0x24 || x == 0x2B || x == 0x3C || x == 0x3D || x == 0x3E || x == 0x5E || x == 0x7E
                    || x == 0x7C || (backtick && x == 0x60)
                if !(extra || has(k, q, Flags.punctuation)) { break }
                q += 1
            }
            return q - p
        case .threeASCIIDigits:
            guard p + 3 <= end else { return 0 }
            for q in p..<(p + 3) where !(0x30...0x39).contains(c[q]) { return 0 }
            return 3
        case .numberRun:
            return run(k, p, end, Flags.number)
        case .singleNumber:
            return has(k, p, Flags.number) ? 1 : 0
        case .singleNewline:
            return c[p] == 0x0D || c[p] == 0x0A ? 1 : 0
        case .deepseekLetters:
            return optionalSpaceThenRun(c, k, p, end) { cp, _ in inRanges(cp, deepseekLetterRanges) }
        case .deepseekPunctuation:
            return optionalSpaceThenRun(c, k, p, end) { cp, _ in
                (0x21...0x2F).contains(cp) || (0x3A...0x7E).contains(cp) || (0xFF01...0xFF0F).contains(cp)
                    || (0xFF1A...0xFF5E).contains(cp) || (0x2018...0x201F).contains(cp) || (0x3000...0x3002).contains(cp)
            }
        case .trailingSpace:
            let n = run(k, p, end, Flags.space)
            return n > 0 && p + n == end ? n : 0
        case .cjkRun:
            var q = p
            while q < end, isCJK(c[q]) { q += 1 }
            return q - p
        case .spaceLetters:
            return optionalSpaceThenRun(c, k, p, end) { _, f in f & Flags.letter != 0 }
        case .spacePunctuation:
            return optionalSpaceThenRun(c, k, p, end) { _, f in f & Flags.punctuation != 0 }
        case .bloom:
            var q = p
            if c[q] == 0x20 { q += 1 }
            let body = q
            while q < end, !bloomStop(c[q], k[q]) { q += 1 }
            if q > body { return q - p }
            return 0  // without the space the run would start at the space, which is a stop
        case .newlineRuns:
            let newline = c[p] == 0x0A
            var q = p
            while q < end, (c[q] == 0x0A) == newline { q += 1 }
            return q - p
        }
    }

    @inline(__always) static func run(_ k: UnsafeBufferPointer<UInt8>, _ p: Int, _ end: Int, _ f: UInt8) -> Int {
        var q = p
        while q < end, k[q] & f != 0 { q += 1 }
        return q - p
    }

    /// `\s?X+`: one optional whitespace, then a nonempty run of X (if X fails after the whitespace,
    /// the whitespace itself is not X here, so the match fails).
    @inline(__always) static func optionalSpaceThenRun(_ c: UnsafeBufferPointer<UInt32>, _ k: UnsafeBufferPointer<UInt8>,
                                                       _ p: Int, _ end: Int, _ x: (UInt32, UInt8) -> Bool) -> Int {
        var q = p
        if k[q] & Flags.space != 0 && !x(c[q], k[q]) { q += 1 }
        let body = q
        while q < end, x(c[q], k[q]) { q += 1 }
        return q > body ? q - p : 0
    }

    /// The English contractions at `p` ('s 't 're 've 'm 'll 'd), any case when `ignoreCase`.
    @inline(__always) static func contraction(_ c: UnsafeBufferPointer<UInt32>, _ p: Int, _ end: Int, ignoreCase: Bool) -> Int {
        guard c[p] == 0x27, p + 1 < end else { return 0 }
        func lower(_ x: UInt32) -> UInt32 { ignoreCase && (0x41...0x5A).contains(x) ? x + 32 : x }
        let a = lower(c[p + 1])
        switch a {
        case 0x73, 0x74, 0x6D, 0x64: return 2  // s t m d
        case 0x72, 0x76:  // re ve
            return p + 2 < end && lower(c[p + 2]) == 0x65 ? 3 : 0
        case 0x6C:  // ll
            return p + 2 < end && lower(c[p + 2]) == 0x6C ? 3 : 0
        default: return 0
        }
    }

    /// The whitespace alternatives shared by the GPT-2 family: `\s*[\r\n]+` (when `newlines`), then
    /// `\s+(?!\S)`, then `\s+`. `p` starts a whitespace run.
    @inline(__always) static func whitespace(_ c: UnsafeBufferPointer<UInt32>, _ k: UnsafeBufferPointer<UInt8>,
                                             _ p: Int, _ end: Int, newlines: Bool) -> Int {
        let e = p + run(k, p, end, Flags.space)
        if e == p { return 0 }
        if newlines {
            // \s* backs off to the last \r or \n of the run; [\r\n]+ then takes just that one.
            var q = e - 1
            while q >= p {
                if c[q] == 0x0A || c[q] == 0x0D { return q + 1 - p }
                q -= 1
            }
        }
        // \s+(?!\S): the whole run at the end of the piece, else all but its last character.
        if e == end { return e - p }
        if e - p >= 2 { return e - 1 - p }
        return e - p  // \s+
    }

    static func gpt2(_ c: UnsafeBufferPointer<UInt32>, _ k: UnsafeBufferPointer<UInt8>, _ p: Int, _ end: Int) -> Int {
        let n = contraction(c, p, end, ignoreCase: false)
        if n > 0 { return n }
        let q = c[p] == 0x20 && p + 1 < end ? p + 1 : p
        let f = k[q]
        if f & Flags.letter != 0 { return q + run(k, q, end, Flags.letter) - p }
        if f & Flags.number != 0 { return q + run(k, q, end, Flags.number) - p }
        if f & (Flags.space | Flags.letter | Flags.number) == 0 {
            var r = q
            while r < end, k[r] & (Flags.space | Flags.letter | Flags.number) == 0 { r += 1 }
            return r - p
        }
        return whitespace(c, k, p, end, newlines: false)
    }

    static func llama3(_ c: UnsafeBufferPointer<UInt32>, _ k: UnsafeBufferPointer<UInt8>, _ p: Int, _ end: Int,
                       maxDigits: Int, marks: Bool) -> Int {
        let n = contraction(c, p, end, ignoreCase: true)
        if n > 0 { return n }
        let letters = marks ? Flags.letter | Flags.mark : Flags.letter
        let f = k[p]
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if f & letters != 0 { return run(k, p, end, letters) }
        let isNewline = c[p] == 0x0A || c[p] == 0x0D
        if !isNewline && f & (Flags.letter | Flags.number) == 0 && p + 1 < end && k[p + 1] & letters != 0 {
            return 1 + run(k, p + 1, end, letters)
        }
        // \p{N}{1,n}
        if f & Flags.number != 0 { return min(run(k, p, end, Flags.number), maxDigits) }
        // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
        let notOther = Flags.space | letters | Flags.number
        let q = c[p] == 0x20 && p + 1 < end ? p + 1 : p
        if k[q] & notOther == 0 {
            var r = q
            while r < end, k[r] & notOther == 0 { r += 1 }
            while r < end, c[r] == 0x0A || c[r] == 0x0D { r += 1 }
            return r - p
        }
        return whitespace(c, k, p, end, newlines: true)
    }

    static func gpt4o(_ c: UnsafeBufferPointer<UInt32>, _ k: UnsafeBufferPointer<UInt8>, _ p: Int, _ end: Int) -> Int {
        // U = [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}], W = [\p{Ll}\p{Lm}\p{Lo}\p{M}]
        @inline(__always) func isU(_ i: Int) -> Bool {
            let f = k[i]
            return f & Flags.mark != 0 || (f & Flags.letter != 0 && f & Flags.lower == 0)
        }
        @inline(__always) func isW(_ i: Int) -> Bool {
            let f = k[i]
            return f & Flags.mark != 0 || (f & Flags.letter != 0 && f & Flags.upper == 0)
        }
        func withContraction(_ e: Int) -> Int { e < end ? e + contraction(c, e, end, ignoreCase: true) : e }
        // U*W+ from s: U* greedy, then backs off until W+ can start
        func first(_ s: Int) -> Int? {
            var u = s
            while u < end, isU(u) { u += 1 }
            var j = u
            while j >= s {
                if j < end, isW(j) {
                    var e = j
                    while e < end, isW(e) { e += 1 }
                    return e
                }
                j -= 1
            }
            return nil
        }
        // U+W* from s
        func second(_ s: Int) -> Int? {
            var u = s
            while u < end, isU(u) { u += 1 }
            if u == s { return nil }
            while u < end, isW(u) { u += 1 }
            return u
        }
        let f = k[p]
        let prefixOK = !(c[p] == 0x0A || c[p] == 0x0D) && f & (Flags.letter | Flags.number) == 0 && p + 1 < end
        for alternative in 0..<2 {
            if prefixOK, let e = alternative == 0 ? first(p + 1) : second(p + 1) { return withContraction(e) - p }
            if let e = alternative == 0 ? first(p) : second(p) { return withContraction(e) - p }
        }
        if f & Flags.number != 0 { return min(run(k, p, end, Flags.number), 3) }
        let notOther = Flags.space | Flags.letter | Flags.number
        let q = c[p] == 0x20 && p + 1 < end ? p + 1 : p
        if k[q] & notOther == 0 {
            var r = q
            while r < end, k[r] & notOther == 0 { r += 1 }
            while r < end, c[r] == 0x0A || c[r] == 0x0D || c[r] == 0x2F { r += 1 }
            return r - p
        }
        return whitespace(c, k, p, end, newlines: true)
    }

    @inline(__always) static func isCJK(_ cp: UInt32) -> Bool {
        (0x4E00...0x9FA5).contains(cp) || (0x0800...0x4E00).contains(cp) || (0xAC00...0xD7FF).contains(cp)
    }

    @inline(__always) static func bloomStop(_ cp: UInt32, _ f: UInt8) -> Bool {
        if f & Flags.space != 0 { return true }
        switch cp {
        case 0x28, 0x29, 0x7C, 0x2E, 0x2C, 0x21, 0x3F, 0x2026, 0x3002, 0xFF0C, 0x3001, 0x0964, 0x06D4, 0x060C:
            return true
        default:
            return false
        }
    }

    static func inRanges(_ cp: UInt32, _ ranges: [(UInt32, UInt32)]) -> Bool {
        var lo = 0, hi = ranges.count
        while lo < hi {
            let mid = (lo + hi) >> 1
            if ranges[mid].1 < cp { lo = mid + 1 } else { hi = mid }
        }
        return lo < ranges.count && ranges[lo].0 <= cp
    }

    /// The letter list of DeepSeek LLM's pre-tokenizer pattern, as sorted inclusive ranges.
    static let deepseekLetterRanges: [(UInt32, UInt32)] = [
        (0x41, 0x5A), (0x61, 0x7A), (0xB5, 0xB5), (0xC0, 0xD6), (0xD8, 0xF6), (0xF8, 0x1BA), (0x1BC, 0x1BF),
        (0x1C4, 0x293), (0x295, 0x2AF), (0x370, 0x373), (0x376, 0x377), (0x37B, 0x37D), (0x37F, 0x37F),
        (0x386, 0x386), (0x388, 0x38A), (0x38C, 0x38C), (0x38E, 0x3A1), (0x3A3, 0x3F5), (0x3F7, 0x481),
        (0x48A, 0x52F), (0x531, 0x556), (0x10A0, 0x10C5), (0x13A0, 0x13F5), (0x13F8, 0x13FD), (0x1C90, 0x1CBA),
        (0x1CBD, 0x1CBF), (0x1D00, 0x1D2B), (0x1D6B, 0x1D77), (0x1D79, 0x1D9A), (0x1E00, 0x1F15), (0x1F18, 0x1F1D),
        (0x1F20, 0x1F45), (0x1F48, 0x1F4D), (0x1F50, 0x1F57), (0x1F59, 0x1F59), (0x1F5B, 0x1F5B), (0x1F5D, 0x1F5D),
        (0x1F5F, 0x1F7D), (0x1F80, 0x1FB4), (0x1FB6, 0x1FBC), (0x1FBE, 0x1FBE), (0x1FC2, 0x1FC4), (0x1FC6, 0x1FCC),
        (0x1FD0, 0x1FD3), (0x1FD6, 0x1FDB), (0x1FE0, 0x1FEC), (0x1FF2, 0x1FF4), (0x1FF6, 0x1FFC), (0x2102, 0x2102),
        (0x2107, 0x2107), (0x210A, 0x2113), (0x2115, 0x2115), (0x2119, 0x211D), (0x2124, 0x2124), (0x2126, 0x2126),
        (0x2128, 0x2128), (0x212A, 0x212D), (0x212F, 0x2134), (0x2139, 0x2139), (0x213C, 0x213F), (0x2145, 0x2149),
        (0x214E, 0x214E), (0x2183, 0x2184), (0x2C00, 0x2C7B), (0x2C7E, 0x2CE4), (0x2CEB, 0x2CEE), (0x2CF2, 0x2CF3),
        (0xA640, 0xA66D), (0xA680, 0xA69B), (0xA722, 0xA76F), (0xA771, 0xA787), (0xA78B, 0xA78E), (0xAB70, 0xABBF),
        (0xFB00, 0xFB06), (0xFB13, 0xFB17), (0xFF21, 0xFF3A), (0xFF41, 0xFF5A), (0x10400, 0x1044F), (0x104B0, 0x104D3),
        (0x104D8, 0x104FB), (0x10C80, 0x10CB2), (0x10CC0, 0x10CF2), (0x118A0, 0x118DF), (0x1E900, 0x1E943),
    ]
}

extension Tokenizer {
    /// The words the pre-tokenizer named `name` (a `tokenizer.ggml.pre` value) cuts `text` into, as
    /// bytes; nil for a name Puna does not know. For tests and tools: encoding does this internally.
    public static func preTokenize(_ text: [UInt8], preTokenizer name: String) -> [[UInt8]]? {
        guard let pre = PreTokenizer.named(name) else { return nil }
        var cps: [UInt32] = []
        var offsets: [Int32] = []
        text.withUnsafeBufferPointer { UnicodeClass.decode($0, codePoints: &cps, offsets: &offsets) }
        let classes = cps.map { UnicodeClass.of($0) }
        var ends: [Int32] = []
        var scratch: [Int32] = []
        cps.withUnsafeBufferPointer { c in
            classes.withUnsafeBufferPointer { k in pre.split(c, classes: k, into: &ends, scratch: &scratch) }
        }
        var words: [[UInt8]] = []
        var start = 0
        for e in ends {
            words.append(Array(text[Int(offsets[start])..<Int(offsets[Int(e)])]))
            start = Int(e)
        }
        return words
    }
}
