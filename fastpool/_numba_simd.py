"""A vector helper for the numba kernels that LLVM does not derive from a loop: the 4x4
block transpose that stores channels-last results into a channels-first array.

Written as LLVM IR (``shufflevector`` on vectors of four elements), which LLVM lowers to
the shuffles of whatever vector unit the host has. A scalar loop doing the same moves one
element per store; this moves four.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


def _mask(*lanes):
    return ir.Constant(ir.VectorType(_I32, len(lanes)), [_I32(k) for k in lanes])


@intrinsic
def transpose4(typingctx, src, s, sstride, dst, d, dstride):
    """``dst[d + c * dstride + r] = src[s + r * sstride + c]`` for ``r, c`` in ``0..3``:
    four rows of four elements of the 1-D array ``src`` read as vectors, stored as the
    four columns into the 1-D array ``dst``. No bounds checks: the caller keeps all sixteen
    positions of each array in range."""
    if not (isinstance(src, types.Array) and isinstance(dst, types.Array)
            and src.ndim == dst.ndim == 1 and src.dtype == dst.dtype):
        return None
    sig = types.void(src, types.int64, types.int64, dst, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        a_src, a_s, a_ss, a_dst, a_d, a_ds = args
        data_src = context.make_array(signature.args[0])(context, builder, a_src).data
        data_dst = context.make_array(signature.args[3])(context, builder, a_dst).data
        elem = context.get_data_type(signature.args[0].dtype)
        vec = ir.VectorType(elem, 4).as_pointer()
        align = context.get_abi_sizeof(elem)

        def at(base, start, stride, r):
            offset = builder.add(start, builder.mul(stride, _I64(r)))
            return builder.bitcast(builder.gep(base, [offset]), vec)

        a, b, c, e = (builder.load(at(data_src, a_s, a_ss, r), align=align) for r in range(4))
        # (a0 b0 a1 b1), (a2 b2 a3 b3), then the same for the lower two rows
        ab0, ab1 = (builder.shuffle_vector(a, b, _mask(0, 4, 1, 5)),
                    builder.shuffle_vector(a, b, _mask(2, 6, 3, 7)))
        ce0, ce1 = (builder.shuffle_vector(c, e, _mask(0, 4, 1, 5)),
                    builder.shuffle_vector(c, e, _mask(2, 6, 3, 7)))
        columns = (builder.shuffle_vector(ab0, ce0, _mask(0, 1, 4, 5)),
                   builder.shuffle_vector(ab0, ce0, _mask(2, 3, 6, 7)),
                   builder.shuffle_vector(ab1, ce1, _mask(0, 1, 4, 5)),
                   builder.shuffle_vector(ab1, ce1, _mask(2, 3, 6, 7)))
        for r, column in enumerate(columns):
            builder.store(column, at(data_dst, a_d, a_ds, r), align=align)
        return context.get_dummy_value()

    return sig, codegen
