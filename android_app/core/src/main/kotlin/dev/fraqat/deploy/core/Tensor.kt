package dev.fraqat.deploy.core

import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder

/** A dense row-major tensor of one of the protocol's dtypes: what goes into and comes out of a component. */
sealed class Tensor(val shape: IntArray) {
    abstract val dtype: DType
    val size: Int get() = shape.fold(1) { a, b -> a * b }

    /** The rows [from, to) along the first axis. */
    abstract fun rows(from: Int, to: Int): Tensor

    protected fun rowSize() = if (shape.isEmpty()) 1 else size / shape[0]

    protected fun rowsShape(count: Int) = shape.copyOf().also { it[0] = count }

    companion object {
        /** [a] and [b] stacked along the first axis (numpy's `concatenate([a, b])`). */
        fun concat(a: Tensor, b: Tensor): Tensor {
            require(a.dtype == b.dtype && a.shape.size == b.shape.size && a.shape.drop(1) == b.shape.drop(1)) {
                "cannot concatenate ${a.describe()} and ${b.describe()}"
            }
            val shape = a.shape.copyOf().also { it[0] = a.shape[0] + b.shape[0] }
            return when (a) {
                is FloatTensor -> FloatTensor(shape, a.data + (b as FloatTensor).data)
                is LongTensor -> LongTensor(shape, a.data + (b as LongTensor).data)
                is IntTensor -> IntTensor(shape, a.data + (b as IntTensor).data)
            }
        }
    }

    fun describe() = "${dtype.json}${shape.contentToString()}"
}

class FloatTensor(shape: IntArray, val data: FloatArray) : Tensor(shape) {
    init {
        require(data.size == size) { "${data.size} values do not fill shape ${shape.contentToString()}" }
    }

    override val dtype get() = DType.FLOAT32

    override fun rows(from: Int, to: Int) = FloatTensor(rowsShape(to - from), data.copyOfRange(from * rowSize(), to * rowSize()))

    operator fun get(i: Int) = data[i]
}

class LongTensor(shape: IntArray, val data: LongArray) : Tensor(shape) {
    init {
        require(data.size == size) { "${data.size} values do not fill shape ${shape.contentToString()}" }
    }

    override val dtype get() = DType.INT64

    override fun rows(from: Int, to: Int) = LongTensor(rowsShape(to - from), data.copyOfRange(from * rowSize(), to * rowSize()))
}

class IntTensor(shape: IntArray, val data: IntArray) : Tensor(shape) {
    init {
        require(data.size == size) { "${data.size} values do not fill shape ${shape.contentToString()}" }
    }

    override val dtype get() = DType.INT32

    override fun rows(from: Int, to: Int) = IntTensor(rowsShape(to - from), data.copyOfRange(from * rowSize(), to * rowSize()))
}

/** The shape and dtype a component expects for one input (from the compiled model). */
data class TensorInfo(val dtype: DType?, val shape: IntArray)

/** Raw little-endian `.bin` tensors, as the CLI writes them (`numpy.ndarray.tofile`). */
object TensorBin {
    fun read(file: File, dtype: DType, shape: IntArray): Tensor {
        val bytes = file.readBytes()
        val count = shape.fold(1L) { a, b -> a * b }
        if (bytes.size.toLong() != count * dtype.bytes) {
            throw BenchError(
                ErrorKind.INVALID_REQUEST,
                "${file.name} holds ${bytes.size / dtype.bytes} values, not ${shape.contentToString()} (${dtype.json})",
            )
        }
        val buffer = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN)
        return when (dtype) {
            DType.FLOAT32 -> FloatTensor(shape, FloatArray(count.toInt()).also { buffer.asFloatBuffer().get(it) })
            DType.INT64 -> LongTensor(shape, LongArray(count.toInt()).also { buffer.asLongBuffer().get(it) })
            DType.INT32 -> IntTensor(shape, IntArray(count.toInt()).also { buffer.asIntBuffer().get(it) })
        }
    }

    fun write(file: File, tensor: Tensor) {
        val buffer = ByteBuffer.allocate(tensor.size * tensor.dtype.bytes).order(ByteOrder.LITTLE_ENDIAN)
        when (tensor) {
            is FloatTensor -> buffer.asFloatBuffer().put(tensor.data)
            is LongTensor -> buffer.asLongBuffer().put(tensor.data)
            is IntTensor -> buffer.asIntBuffer().put(tensor.data)
        }
        file.parentFile?.mkdirs()
        file.writeBytes(buffer.array())
    }
}
