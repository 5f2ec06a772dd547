package dev.fraqat.deploy.core

import java.io.File
import java.io.IOException
import java.io.RandomAccessFile
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.channels.FileChannel

/**
 * Gemma's embedding table on the host side (`fraqat-deploy export --embedding host` writes it as `export/embedding.npy`:
 * numpy's .npy format, little-endian float16 `[vocab, hidden]`, C order), memory-mapped: a lookup reads only the rows
 * it asks for (one 2 x hidden-byte row per decoded token), never the whole table. The rows are the embedding module's
 * output rounded to float16; the graphs take them, widened to float32, as `inputs_embeds`
 * (`fraqat_deploy/models/gemma_graphs.py` `TableFile`).
 */
class EmbeddingTable private constructor(private val data: ByteBuffer, val vocab: Int, val hidden: Int) {
    /** The rows of [ids] as `inputs_embeds [1, ids.size, hidden]`, float32. */
    fun rows(ids: LongArray): FloatTensor {
        val out = FloatArray(ids.size * hidden)
        for ((t, id) in ids.withIndex()) {
            if (id < 0 || id >= vocab) throw BenchError(ErrorKind.INVALID_REQUEST, "token id $id is outside the embedding table's 0..${vocab - 1}")
            val base = id.toInt() * hidden * 2
            for (j in 0 until hidden) out[t * hidden + j] = halfToFloat(data.getShort(base + 2 * j).toInt())
        }
        return FloatTensor(intArrayOf(1, ids.size, hidden), out)
    }

    companion object {
        private val MAGIC = byteArrayOf(0x93.toByte(), 'N'.code.toByte(), 'U'.code.toByte(), 'M'.code.toByte(), 'P'.code.toByte(), 'Y'.code.toByte())

        /** Maps [file]; a file that is not a float16 [vocab, hidden] .npy table is a `model_missing` error. */
        fun open(file: File): EmbeddingTable {
            fun bad(what: String): Nothing = throw BenchError(ErrorKind.MODEL_MISSING, "${file.name} is not a float16 embedding table: $what")
            if (!file.isFile) throw BenchError(ErrorKind.MODEL_MISSING, "the embedding table ${file.path} is not on the device")
            try {
                RandomAccessFile(file, "r").use { raf ->
                    val channel = raf.channel
                    val size = channel.size()
                    if (size > Int.MAX_VALUE) bad("$size bytes is more than one mapping holds (2 GB)")
                    val buffer = channel.map(FileChannel.MapMode.READ_ONLY, 0, size).order(ByteOrder.LITTLE_ENDIAN)
                    if (size < 12) bad("too short")
                    val magic = ByteArray(MAGIC.size) { buffer.get(it) }
                    if (!magic.contentEquals(MAGIC)) bad("no .npy magic")
                    val major = buffer.get(6).toInt()
                    val (headerLength, start) = when (major) {
                        1 -> (buffer.getShort(8).toInt() and 0xffff) to 10
                        2, 3 -> buffer.getInt(8) to 12
                        else -> bad(".npy version $major")
                    }
                    if (start + headerLength > size) bad("the header runs past the file")
                    val header = ByteArray(headerLength) { buffer.get(start + it) }.toString(Charsets.ISO_8859_1)
                    val (vocab, hidden) = parseHeader(header) ?: bad("header $header")
                    val offset = start + headerLength
                    if (size != offset + 2L * vocab * hidden) bad("$size bytes do not hold [$vocab, $hidden] after the header")
                    val rows = buffer.duplicate()
                    rows.position(offset)
                    return EmbeddingTable(rows.slice().order(ByteOrder.LITTLE_ENDIAN), vocab, hidden)
                }
            } catch (e: IOException) {
                throw BenchError(ErrorKind.MODEL_MISSING, "cannot map the embedding table ${file.path}: ${e.message}")
            }
        }

        /** (vocab, hidden) from a .npy header dict of a little-endian float16, C-order 2-D array; null otherwise. */
        fun parseHeader(header: String): Pair<Int, Int>? {
            val descr = Regex("'descr':\\s*'([^']*)'").find(header)?.groupValues?.get(1)
            val fortran = Regex("'fortran_order':\\s*(True|False)").find(header)?.groupValues?.get(1)
            val shape = Regex("'shape':\\s*\\(([^)]*)\\)").find(header)?.groupValues?.get(1)
                ?.split(",")?.map { it.trim() }?.filter { it.isNotEmpty() }?.map { it.toIntOrNull() ?: return null }
            if (descr != "<f2" || fortran != "False" || shape == null || shape.size != 2) return null
            return shape[0] to shape[1]
        }

        /** IEEE 754 binary16 bits -> float (subnormals, infinities and NaN included). */
        fun halfToFloat(bits: Int): Float {
            val sign = (bits shr 15) and 1
            val exponent = (bits shr 10) and 0x1f
            val mantissa = bits and 0x3ff
            val magnitude = when (exponent) {
                0 -> mantissa * (1.0f / (1 shl 24)) // subnormal: mantissa x 2^-24
                0x1f -> if (mantissa == 0) Float.POSITIVE_INFINITY else Float.NaN
                else -> Float.fromBits(((exponent - 15 + 127) shl 23) or (mantissa shl 13))
            }
            return if (sign == 1) -magnitude else magnitude
        }
    }
}
