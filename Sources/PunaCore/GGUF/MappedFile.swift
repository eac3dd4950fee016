import CPuna

/// A whole file mapped read-only. Weight tensors are views into this mapping: the bytes stay
/// file-backed (clean pages the kernel may drop and re-read), nothing is copied.
public final class MappedFile {
    public let path: String
    private var mapping: puna_mapping

    public init(path: String) throws(PunaError) {
        self.path = path
        mapping = puna_map_file(path)
        if mapping.error != 0 {
            if mapping.is_directory != 0 { throw PunaError("\(path): is a directory, not a file") }
            throw PunaError("\(path): cannot open: \(String(cString: puna_strerror(mapping.error)))")
        }
    }

    deinit { puna_unmap(&mapping) }

    /// File size in bytes.
    public var count: Int { Int(mapping.size) }

    /// Start of the mapping; nil for an empty file.
    public var baseAddress: UnsafeRawPointer? { mapping.data.map { UnsafeRawPointer($0) } }

    public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: baseAddress, count: count) }

    public enum Advice { case normal, sequential, random, willNeed, dontNeed }

    /// madvise a byte range of the mapping (a hint: failures are ignored).
    public func advise(offset: Int, count: Int, _ advice: Advice) {
        let code: Int32
        switch advice {
        case .normal: code = 0
        case .sequential: code = 1
        case .random: code = 2
        case .willNeed: code = 3
        case .dontNeed: code = 4
        }
        _ = withUnsafePointer(to: &mapping) { puna_advise($0, Int64(offset), Int64(count), code) }
    }

    /// mlock the whole mapping.
    public func lock() throws(PunaError) {
        let err = withUnsafePointer(to: &mapping) { puna_lock($0) }
        if err != 0 { throw PunaError("\(path): mlock failed: \(String(cString: puna_strerror(err)))") }
    }
}

/// Reads a whole input of at most `maxBytes` bytes — a regular file, a pipe or a terminal; "-" is
/// standard input — and hands its bytes to `body`. A device such as /dev/zero is refused (its reads
/// never end) and so is anything longer than `maxBytes`, without reading past the limit; `limitNote`
/// says in that message why the limit is what it is.
public func withInputBytes<R>(_ path: String, maxBytes: Int, limitNote: String,
                              _ body: (UnsafeBufferPointer<UInt8>) throws(PunaError) -> R) throws(PunaError) -> R {
    var size: Int64 = 0
    var error: Int32 = 0
    guard let bytes = puna_read_file(path == "-" ? "/dev/stdin" : path, Int64(maxBytes), &size, &error) else {
        if error == EFBIG_CODE {
            throw PunaError("\(path): longer than \(formatBytes(maxBytes)) (\(limitNote))")
        }
        throw PunaError("\(path): cannot read: \(String(cString: puna_strerror(error)))")
    }
    defer { puna_free(bytes) }
    return try body(UnsafeBufferPointer(start: bytes, count: Int(size)))
}

/// EFBIG, as Linux numbers it (Embedded Swift has no Glibc module to name it).
let EFBIG_CODE: Int32 = 27
