package dev.fraqat.deploy.core

import java.io.ByteArrayOutputStream
import java.io.DataOutputStream
import java.util.zip.CRC32
import java.util.zip.Deflater

/** Images as the CLI saves them: [3, H, W] in [0, 1] -> 8-bit RGB, rounded half to even (numpy), written as PNG. */
object Png {
    /** Interleaved RGB bytes [H, W, 3] of an image [3, H, W] (`pipeline.image_to_png`'s rounding). */
    fun rgb(image: FloatTensor): ByteArray {
        require(image.shape.size == 3 && image.shape[0] == 3) { "expected an image [3, H, W], got ${image.describe()}" }
        val h = image.shape[1]
        val w = image.shape[2]
        val out = ByteArray(h * w * 3)
        for (c in 0 until 3) for (y in 0 until h) for (x in 0 until w) {
            val v = image.data[(c * h + y) * w + x].coerceIn(0f, 1f) * 255f
            out[(y * w + x) * 3 + c] = Math.rint(v.toDouble()).toInt().toByte()
        }
        return out
    }

    /** ARGB pixels (for an Android Bitmap). */
    fun argb(image: FloatTensor): IntArray {
        val rgb = rgb(image)
        return IntArray(rgb.size / 3) { i ->
            (0xFF shl 24) or ((rgb[3 * i].toInt() and 0xFF) shl 16) or ((rgb[3 * i + 1].toInt() and 0xFF) shl 8) or (rgb[3 * i + 2].toInt() and 0xFF)
        }
    }

    fun encode(image: FloatTensor): ByteArray = encodeRgb(image.shape[2], image.shape[1], rgb(image))

    fun encodeRgb(width: Int, height: Int, rgb: ByteArray): ByteArray {
        val raw = ByteArrayOutputStream()
        for (y in 0 until height) {
            raw.write(0) // filter: none
            raw.write(rgb, y * width * 3, width * 3)
        }
        val deflater = Deflater(Deflater.BEST_COMPRESSION)
        deflater.setInput(raw.toByteArray())
        deflater.finish()
        val compressed = ByteArrayOutputStream()
        val buffer = ByteArray(8192)
        while (!deflater.finished()) compressed.write(buffer, 0, deflater.deflate(buffer))
        deflater.end()
        val out = ByteArrayOutputStream()
        out.write(byteArrayOf(0x89.toByte(), 'P'.code.toByte(), 'N'.code.toByte(), 'G'.code.toByte(), 13, 10, 26, 10))
        val header = ByteArrayOutputStream().also {
            DataOutputStream(it).apply {
                writeInt(width)
                writeInt(height)
                writeByte(8) // bit depth
                writeByte(2) // colour type: RGB
                writeByte(0)
                writeByte(0)
                writeByte(0)
            }
        }
        chunk(out, "IHDR", header.toByteArray())
        chunk(out, "IDAT", compressed.toByteArray())
        chunk(out, "IEND", ByteArray(0))
        return out.toByteArray()
    }

    private fun chunk(out: ByteArrayOutputStream, type: String, data: ByteArray) {
        val d = DataOutputStream(out)
        d.writeInt(data.size)
        val typeBytes = type.toByteArray(Charsets.US_ASCII)
        d.write(typeBytes)
        d.write(data)
        val crc = CRC32()
        crc.update(typeBytes)
        crc.update(data)
        d.writeInt(crc.value.toInt())
    }
}
