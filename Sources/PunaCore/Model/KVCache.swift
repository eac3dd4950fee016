import CPuna

/// Keys and values of every layer for the positions a sequence has seen so far.
/// Layout per layer: K and V are each [rows][kvDimension] elements of `type` (f32, f16 or q8_0),
/// allocated once for the whole context so memory use is known up front. A layer that attends
/// through a sliding window keeps only a ring of rows (window + the longest step − 1 + a margin
/// for rewinds): position p lives in row p % ringRows, so long contexts fit small boards.
public final class KVCache {
    public let capacity: Int
    public let layers: Int
    public let kvDimension: Int
    public let type: GGMLType
    /// Per layer: 0 = one row per position; > 0 = a ring of that many rows.
    public let ringRows: [Int]
    /// The smallest ring (nil: no layer has one).
    private let smallestRing: Int?
    /// Positions filled so far; the next token goes at this position.
    public internal(set) var count = 0
    /// Keys and values of the layers that run on a Vulkan device (Vulkan.swift).
    var deviceCache: VulkanKVCache? = nil

    /// Positions a chat may take back on top of a step (`truncate`) before the rings lose rows it needs.
    public static let rewindRows = 256

    let rowBytes: Int
    private let layerStart: [Int]     // first row of each layer
    private let totalRows: Int
    private let keys: UnsafeMutableRawPointer
    private let values: UnsafeMutableRawPointer
    /// One past the highest position written, and the lowest position every ring still holds.
    private var writtenEnd = 0
    private(set) var oldestRingPosition = 0

    public static let supportedTypes: [GGMLType] = [.f32, .f16, .q8_0]

    public init(layers: Int, capacity: Int, kvDimension: Int, type: GGMLType, ringRows: [Int]? = nil) throws(PunaError) {
        guard KVCache.supportedTypes.contains(type) else {
            throw PunaError("KV cache type \(type.name) is not supported (use \(KVCache.supportedTypes.map { $0.name }.joined(separator: ", ")))")
        }
        guard let row = type.rowBytes(kvDimension) else {
            throw PunaError("KV width \(kvDimension) is not a whole number of \(type.name) blocks")
        }
        let rings = ringRows ?? [Int](repeating: 0, count: layers)
        guard rings.count == layers, rings.allSatisfy({ $0 >= 0 && $0 <= capacity }) else {
            throw PunaError("KV cache: ring sizes must be one per layer, each at most the capacity")
        }
        self.capacity = capacity
        self.layers = layers
        self.kvDimension = kvDimension
        self.type = type
        self.ringRows = rings.map { $0 == capacity ? 0 : $0 }
        smallestRing = self.ringRows.filter { $0 > 0 }.min()
        rowBytes = row
        var starts: [Int] = []
        var rows = 0
        for r in self.ringRows {
            starts.append(rows)
            rows += r > 0 ? r : capacity
        }
        layerStart = starts
        totalRows = rows
        let total = MemoryEstimate.product(rows, row)
        guard total < MemoryEstimate.saturated else { throw PunaError("KV cache of \(capacity) positions is too large") }
        keys = UnsafeMutableRawPointer.allocate(byteCount: max(total, 1), alignment: 64)
        values = UnsafeMutableRawPointer.allocate(byteCount: max(total, 1), alignment: 64)
    }

    deinit {
        keys.deallocate()
        values.deallocate()
    }

    /// Bytes held by K and V together.
    public var byteCount: Int { 2 * totalRows * rowBytes }

    /// Bytes of the keys and values its Vulkan device holds (its GPU layers'; 0 before the first
    /// step on a Vulkan model).
    public var deviceByteCount: Int { deviceCache?.byteCount ?? 0 }

    /// Forget positions from `position` on (e.g. to rewind a chat turn). On layers with a ring,
    /// rows older than the ring are gone: evaluating past a rewind that needs them fails (see
    /// `checkCanContinue`), it never computes with the wrong rows.
    public func truncate(to position: Int) {
        count = min(max(position, 0), count)
    }

    public func reset() {
        count = 0
        writtenEnd = 0
        oldestRingPosition = 0
    }

    /// The row of `position` in `layer` (a ring's row, or the position itself).
    private func row(layer: Int, position: Int) -> Int {
        let ring = ringRows[layer]
        return layerStart[layer] + (ring > 0 ? position % ring : position)
    }

    /// The first row of a layer: attention reads from here (with the layer's ring size).
    func keyRow(layer: Int, position: Int) -> UnsafeMutableRawPointer { keys + row(layer: layer, position: position) * rowBytes }

    func valueRow(layer: Int, position: Int) -> UnsafeMutableRawPointer { values + row(layer: layer, position: position) * rowBytes }

    /// Whether `tokens` more tokens can be evaluated from `count` with windows of `window`: every
    /// ring must still hold the positions the first of them sees, and hold a step this long.
    func checkCanContinue(tokens: Int, window: Int) throws(PunaError) {
        guard let smallest = smallestRing else { return }
        guard tokens <= smallest - window + 1 else {
            throw PunaError("a step of \(tokens) tokens is longer than the sliding-window KV ring allows (\(smallest - window + 1)); lower -b")
        }
        let needed = max(0, count - window + 1)
        if needed < oldestRingPosition {
            throw PunaError("the KV cache was rewound past what its sliding-window layers keep (\(smallest) positions); start the sequence again")
        }
    }

    /// Store `n` rows of f32 keys and values (each kvDimension wide) at positions start..<start+n.
    func store(layer: Int, start: Int, n: Int, keys k: UnsafePointer<Float>, values v: UnsafePointer<Float>) {
        for t in 0..<n {
            // The type was validated at init, so encode cannot fail here.
            try? type.encode(k + t * kvDimension, into: keyRow(layer: layer, position: start + t), count: kvDimension)
            try? type.encode(v + t * kvDimension, into: valueRow(layer: layer, position: start + t), count: kvDimension)
        }
        noteWritten(upTo: start + n)
    }

    /// Record that positions below `end` were written (by `store`, or on a GPU that keeps its own
    /// rows): the rings then no longer hold positions older than their size.
    func noteWritten(upTo end: Int) {
        guard end > writtenEnd else { return }
        writtenEnd = end
        if let smallest = smallestRing { oldestRingPosition = max(oldestRingPosition, writtenEnd - smallest) }
    }
}
