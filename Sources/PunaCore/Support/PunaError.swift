/// The one error type of PunaCore. Embedded Swift supports only typed throws, so every throwing
/// function is `throws(PunaError)`; the message names the file, field, tensor or flag at fault.
public struct PunaError: Error, CustomStringConvertible, Equatable {
    public let message: String

    /// The longest message kept whole. Messages quote names and values from files and requests, which
    /// a hostile input can make megabytes long; a longer message keeps its start and its end.
    public static let maxMessageBytes = 1024

    public init(_ message: String) { self.message = clipped(message, maxBytes: PunaError.maxMessageBytes, keepEnd: true) }

    public var description: String { message }
}

/// `text` cut to at most about `maxBytes` bytes of UTF-8 on character boundaries, saying how much was cut:
/// for quoting names and values taken from input in messages. With `keepEnd` the middle is cut instead
/// of the end (an error message ends with what is wrong).
public func clipped(_ text: String, maxBytes: Int = 160, keepEnd: Bool = false) -> String {
    let total = text.utf8.count
    guard total > maxBytes else { return text }
    let headBudget = keepEnd ? maxBytes * 2 / 3 : maxBytes
    let tailBudget = keepEnd ? maxBytes - headBudget : 0
    var head = "", tail = "", used = 0
    for c in text {
        let n = c.utf8.count
        if used + n > headBudget { break }
        head.append(c)
        used += n
    }
    if tailBudget > 0 {
        var tailChars: [Character] = [], tailUsed = 0
        for c in text.reversed() {
            let n = c.utf8.count
            if tailUsed + n > tailBudget { break }
            tailChars.append(c)
            tailUsed += n
        }
        tail = String(tailChars.reversed())
        used += tailUsed
    }
    return head + "… (\(total - used) bytes cut) …" + tail
}
