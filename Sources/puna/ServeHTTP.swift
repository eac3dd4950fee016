import CPuna
import PunaCore

/// An error answered to a client as OpenAI's error object:
/// `{"error":{"message","type","param","code"}}` with an HTTP status.
struct APIError: Error {
    var status: Int
    var message: String
    var param: String? = nil
    var code: String? = nil
    var type = "invalid_request_error"
    var headers = ""

    static func badField(_ field: String, _ message: String) -> APIError {
        APIError(status: 400, message: message, param: field, code: nil)
    }

    var body: [UInt8] {
        var j = JSONWriter()
        j.beginObject()
        j.key("error")
        j.beginObject()
        j.field("message", message)
        j.field("type", type)
        j.key("param")
        if let param { j.value(param) } else { j.null() }
        j.key("code")
        if let code { j.value(code) } else { j.null() }
        j.endObject()
        j.endObject()
        return j.bytes + [0x0A]
    }
}

/// A parsed HTTP/1.x request head plus its body.
struct HTTPRequest {
    var method: String
    /// The path without its query string.
    var path: String
    /// "HTTP/1.1" or "HTTP/1.0".
    var version: String
    var headers: [(name: String, value: String)]
    var body: [UInt8]

    func header(_ name: String) -> String? { headers.first { $0.name == name }?.value }

    /// Whether the client lets the connection stay open after the response: HTTP/1.1 unless it
    /// says "Connection: close", HTTP/1.0 only when it says "Connection: keep-alive".
    var wantsKeepAlive: Bool {
        var close = false, keep = false
        for h in headers where h.name == "connection" {
            for token in h.value.split(separator: ",") {
                var t = Substring(token)
                while t.first == " " || t.first == "\t" { t = t.dropFirst() }
                while t.last == " " || t.last == "\t" { t = t.dropLast() }
                let name = t.lowercased()
                if name == "close" { close = true }
                if name == "keep-alive" { keep = true }
            }
        }
        if close { return false }
        return version == "HTTP/1.1" || keep
    }
}

/// Limits on what one request may send (slowloris and memory exhaustion).
struct HTTPLimits {
    var maxHeadBytes = 16 << 10
    var maxHeaderCount = 64
    var maxBodyBytes = 1 << 20
}

enum HTTPParse {
    case incomplete
    case done(HTTPRequest, consumed: Int)
}

/// At most `limit` characters of hostile text, for error messages.
func clip(_ s: String, _ limit: Int = 64) -> String {
    var out = ""
    var n = 0
    for c in s.unicodeScalars {
        if n == limit { return out + "…" }
        out.unicodeScalars.append(c.value < 0x20 || c.value == 0x7F ? "?" : c)
        n += 1
    }
    return out
}

/// Parse a request out of `bytes` (all that has arrived). Errors are the responses to send.
func parseHTTPRequest(_ bytes: [UInt8], limits: HTTPLimits) throws(APIError) -> HTTPParse {
    // The head ends at the first CRLF CRLF.
    var headEnd = -1
    var i = 0
    let scanLimit = min(bytes.count, limits.maxHeadBytes + 4)
    while i + 3 < scanLimit {
        if bytes[i] == 13 && bytes[i + 1] == 10 && bytes[i + 2] == 13 && bytes[i + 3] == 10 { headEnd = i; break }
        i += 1
    }
    if headEnd < 0 {
        if bytes.count > limits.maxHeadBytes {
            throw APIError(status: 431, message: "request line and headers exceed \(limits.maxHeadBytes) bytes")
        }
        return .incomplete
    }
    var slices: [ArraySlice<UInt8>] = []
    var start = 0
    var j = 0
    while j < headEnd {  // bytes[headEnd] is CR, so bytes[j + 1] exists
        if bytes[j] == 13 && bytes[j + 1] == 10 {
            slices.append(bytes[start..<j])
            j += 2
            start = j
            continue
        }
        j += 1
    }
    slices.append(bytes[start..<headEnd])
    var lines: [String] = []
    for line in slices {
        // Header bytes must be printable ASCII or tab (obs-text is refused, as is any bare CR/LF/NUL).
        for b in line where !(b == 9 || (b >= 0x20 && b < 0x7F)) {
            throw APIError(status: 400, message: "the request head holds a control or non-ASCII byte")
        }
        lines.append(String(decoding: line, as: UTF8.self))
    }
    guard let requestLine = lines.first else { throw APIError(status: 400, message: "empty request") }
    let parts = requestLine.split(separator: " ", omittingEmptySubsequences: false)
    guard parts.count == 3, !parts[0].isEmpty, parts[0].utf8.allSatisfy({ $0 >= 65 && $0 <= 90 }),
          parts[1].hasPrefix("/"), parts[2] == "HTTP/1.1" || parts[2] == "HTTP/1.0" else {
        throw APIError(status: 400, message: "malformed request line '\(clip(requestLine))'")
    }
    var path = String(parts[1])
    if let q = path.firstIndex(of: "?") { path = String(path[..<q]) }
    var headers: [(name: String, value: String)] = []
    for line in lines.dropFirst() {
        guard headers.count < limits.maxHeaderCount else {
            throw APIError(status: 431, message: "more than \(limits.maxHeaderCount) headers")
        }
        guard let colon = line.firstIndex(of: ":"), colon != line.startIndex,
              !line[..<colon].contains(" "), !line[..<colon].contains("\t") else {
            throw APIError(status: 400, message: "malformed header line '\(clip(line))'")
        }
        let name = String(line[..<colon]).lowercased()
        var value = Substring(line[line.index(after: colon)...])
        while value.first == " " || value.first == "\t" { value = value.dropFirst() }
        while value.last == " " || value.last == "\t" { value = value.dropLast() }
        headers.append((name, String(value)))
    }
    // Chunked bodies are refused rather than half-supported (a smuggling and hang risk).
    if headers.contains(where: { $0.name == "transfer-encoding" }) {
        throw APIError(status: 411, message: "Transfer-Encoding is not supported; send the body with Content-Length")
    }
    var length = 0
    let lengths = headers.filter { $0.name == "content-length" }
    if let first = lengths.first {
        guard lengths.allSatisfy({ $0.value == first.value }), !first.value.isEmpty, first.value.utf8.count <= 12,
              first.value.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }), let n = Int(first.value) else {
            throw APIError(status: 400, message: "invalid Content-Length '\(clip(first.value))'")
        }
        guard n <= limits.maxBodyBytes else {
            throw APIError(status: 413, message: "the body has \(n) bytes, more than the limit of \(limits.maxBodyBytes)")
        }
        length = n
    } else if parts[0] == "POST" {
        throw APIError(status: 411, message: "a POST needs a Content-Length header")
    }
    let bodyStart = headEnd + 4
    guard bytes.count - bodyStart >= length else { return .incomplete }
    let request = HTTPRequest(method: String(parts[0]), path: path, version: String(parts[2]), headers: headers,
                              body: Array(bytes[bodyStart..<(bodyStart + length)]))
    return .done(request, consumed: bodyStart + length)
}

func httpStatusText(_ status: Int) -> String {
    switch status {
    case 200: return "OK"
    case 400: return "Bad Request"
    case 401: return "Unauthorized"
    case 404: return "Not Found"
    case 405: return "Method Not Allowed"
    case 408: return "Request Timeout"
    case 411: return "Length Required"
    case 413: return "Content Too Large"
    case 429: return "Too Many Requests"
    case 431: return "Request Header Fields Too Large"
    case 500: return "Internal Server Error"
    case 503: return "Service Unavailable"
    default: return "Status"
    }
}

/// A whole response head. `keepAliveSeconds` > 0 keeps the connection open for the next request
/// (and says for how long it may idle); without a Content-Length the body is either chunked
/// (kept-alive streams) or ends when the connection closes.
func httpHead(status: Int, contentType: String, contentLength: Int?, extra: String = "",
              keepAliveSeconds: Int = 0, chunked: Bool = false) -> [UInt8] {
    var s = "HTTP/1.1 \(status) \(httpStatusText(status))\r\nContent-Type: \(contentType)\r\n"
    if let contentLength { s += "Content-Length: \(contentLength)\r\n" }
    if chunked { s += "Transfer-Encoding: chunked\r\n" }
    if keepAliveSeconds > 0 {
        s += "Connection: keep-alive\r\nKeep-Alive: timeout=\(keepAliveSeconds)\r\n"
    } else {
        s += "Connection: close\r\n"
    }
    s += "Cache-Control: no-cache\r\n" + extra + "\r\n"
    return Array(s.utf8)
}

/// One piece of a chunked body: its size in hex, the bytes, CRLF.
func httpChunk(_ bytes: [UInt8]) -> [UInt8] {
    let digits: [UInt8] = Array("0123456789abcdef".utf8)
    var size: [UInt8] = []
    var n = bytes.count
    repeat {
        size.insert(digits[n & 15], at: 0)
        n >>= 4
    } while n > 0
    return size + [13, 10] + bytes + [13, 10]
}
