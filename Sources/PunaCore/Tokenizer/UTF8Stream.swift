/// Turns a stream of token ids into text as it is generated. Byte-fallback tokens carry single
/// bytes of a multi-byte character, so the decoder holds back an unfinished character and
/// releases text only in whole UTF-8 characters; `flush()` gives whatever is left at the end.
public struct TextStreamDecoder {
    public let tokenizer: Tokenizer
    /// Print control tokens as their text (like `decode(renderSpecial:)`).
    public let renderSpecial: Bool
    /// Drop one leading space from the first token, as `Tokenizer.decode` does; then the streamed
    /// text equals `decode(allIds)`. Off by default: a continuation after a prompt keeps its space.
    public let stripsLeadingSpace: Bool
    private var pending: [UInt8] = []
    private var isFirstToken = true

    public init(tokenizer: Tokenizer, renderSpecial: Bool = false, stripsLeadingSpace: Bool = false) {
        self.tokenizer = tokenizer
        self.renderSpecial = renderSpecial
        self.stripsLeadingSpace = stripsLeadingSpace
    }

    /// Adds one token; returns the text completed by it (often "", never half a character).
    public mutating func append(_ id: Int32) -> String {
        tokenizer.appendPiece(id, renderSpecial: renderSpecial,
                              stripLeadingSpace: stripsLeadingSpace && tokenizer.addsSpacePrefix && isFirstToken,
                              to: &pending)
        isFirstToken = false
        let ready = UTF8Completion.completePrefixLength(pending)
        if ready == 0 { return "" }
        let text = String(decoding: pending[0..<ready], as: UTF8.self)
        pending.removeFirst(ready)
        return text
    }

    /// Everything still held back; an unfinished character becomes U+FFFD.
    public mutating func flush() -> String {
        defer { pending.removeAll() }
        return String(decoding: pending, as: UTF8.self)
    }

    /// Bytes held back, waiting for the rest of a character.
    public var pendingByteCount: Int { pending.count }
}

enum UTF8Completion {
    /// How many leading bytes can be released now: all of them, except a trailing lead byte
    /// followed by fewer continuation bytes than it announces. Anything malformed is released
    /// (it will show as U+FFFD) rather than held forever.
    static func completePrefixLength(_ bytes: [UInt8]) -> Int {
        let n = bytes.count
        // A character is at most 4 bytes, so an unfinished one starts within the last 3.
        var i = n - 1
        while i >= 0 && i >= n - 3 {
            let b = bytes[i]
            if b & 0xC0 != 0x80 {  // not a continuation byte: the start of the last character
                let need = b >= 0xF0 && b <= 0xF4 ? 4 : b >= 0xE0 && b <= 0xEF ? 3 : b >= 0xC2 && b <= 0xDF ? 2 : 1
                return n - i < need ? i : n
            }
            i -= 1
        }
        return n
    }
}
