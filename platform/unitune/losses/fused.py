"""Fused forward/backward of the unified loss for the common case: a square batch whose
positives are exactly its diagonal (one positive per anchor, no repeated ids).

The training loop calls the loss every step, so these two autograd Functions compute both
directions at once without recording an autograd graph, and write the gradient w.r.t.
`sim` in a few passes. They are checked, like the general path, against plain loops and
with torch.autograd.gradcheck (w.r.t. sim, γ and m) in tests/test_losses.py.

Both return (losses, hard): losses [2] = (i2t, t2i) mean per-anchor losses and hard [2, N]
the hardest negative similarity of each row (hard[0]) and column (hard[1]), not
differentiable. `gamma` and `margin` are numbers or 0-d tensors.
"""

import torch

_NEG_INF = float("-inf")


def _scalar_grad(value, like):
    """A gradient for the 0-d tensor `like`, or None when `like` is a number."""
    return value.reshape(like.shape) if isinstance(like, torch.Tensor) else None


class DiagonalAll(torch.autograd.Function):
    """mining="all": row i's loss is −log_softmax(z)_ii with logits z = γ·x − γ·m·I (and column
    j's −log_softmax over the column), i.e. CLIP's cross-entropy with the margin on the target.
    x: [N, N]."""

    @staticmethod
    def forward(ctx, x, gamma, margin):
        n = x.shape[0]
        z = x * gamma
        z.diagonal().sub_(gamma * margin)
        log_row = torch.log_softmax(z, dim=1)
        log_col = torch.log_softmax(z, dim=0)
        losses = -torch.stack([log_row.diagonal().sum(), log_col.diagonal().sum()]) / n
        z.diagonal().fill_(_NEG_INF)  # z is not needed any more: reuse it for the diagnostics
        hard = torch.stack([z.amax(1), z.amax(0)]) / gamma
        ctx.mark_non_differentiable(hard)
        ctx.save_for_backward(log_row, log_col, x)
        ctx.gamma, ctx.margin = gamma, margin
        return losses, hard

    @staticmethod
    def backward(ctx, grad_losses, _grad_hard):
        log_row, log_col, x = ctx.saved_tensors
        gamma, margin = ctx.gamma, ctx.margin
        n = x.shape[0]
        # d loss_row / d z = (softmax_row − I) / n, likewise for columns; × γ for d z / d x.
        scale = grad_losses * (gamma / n)
        grad_x = log_row.exp().mul_(scale[0])
        grad_x.add_(log_col.exp().mul_(scale[1]))
        grad_x.diagonal().sub_(scale.sum())
        grad_gamma = grad_margin = None
        if ctx.needs_input_grad[1]:  # d z / d γ = x − m·I
            grad_gamma = _scalar_grad(((grad_x * x).sum() - margin * grad_x.diagonal().sum()) / gamma, gamma)
        if ctx.needs_input_grad[2]:  # d z_ii / d m = −γ
            grad_margin = _scalar_grad(-grad_x.diagonal().sum(), margin)
        return grad_x if ctx.needs_input_grad[0] else None, grad_gamma, grad_margin


class DiagonalMined(torch.autograd.Function):
    """mining="hardest" (k = 1) or "topk": anchor a's loss is
    softplus(LSE_k(γ·(v_ak + m)) − γ·x_aa) over its k hardest negatives v_a. x: [N, N]."""

    @staticmethod
    def forward(ctx, x, gamma, margin, k):
        rows = x.clone(memory_format=torch.contiguous_format)
        cols = x.t().clone(memory_format=torch.contiguous_format)  # row reductions are the fast ones
        rows.diagonal().fill_(_NEG_INF)
        cols.diagonal().fill_(_NEG_INF)
        if k == 1:
            index = torch.stack([rows.argmax(1, keepdim=True), cols.argmax(1, keepdim=True)])
            values = torch.stack([rows.gather(1, index[0]), cols.gather(1, index[1])])
        else:
            (v_row, i_row), (v_col, i_col) = rows.topk(k, dim=1), cols.topk(k, dim=1)
            values, index = torch.stack([v_row, v_col]), torch.stack([i_row, i_col])  # [2, N, k]
        d = x.diagonal()
        z = (values + margin) * gamma
        lse = torch.logsumexp(z, dim=2)
        y = lse - gamma * d
        losses = torch.logaddexp(y, torch.zeros_like(y)).mean(1)  # exact softplus
        hard = values[:, :, 0]
        ctx.mark_non_differentiable(hard)
        ctx.save_for_backward(values, index, z, lse, y, d)
        ctx.gamma, ctx.margin = gamma, margin
        return losses, hard

    @staticmethod
    def backward(ctx, grad_losses, _grad_hard):
        values, index, z, lse, y, d = ctx.saved_tensors
        gamma, margin = ctx.gamma, ctx.margin
        n = d.shape[0]
        coef = torch.sigmoid(y) * (grad_losses[:, None] / n)  # d loss / d y, [2, N]
        weights = torch.exp(z - lse[:, :, None])  # softmax over the k chosen negatives
        grad_values = weights * (coef * gamma)[:, :, None]
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = values.new_zeros(n, n)
            grad_x.scatter_add_(1, index[0], grad_values[0])
            grad_x.t().scatter_add_(1, index[1], grad_values[1])
            grad_x.diagonal().sub_(coef.sum(0) * gamma)
        grad_gamma = grad_margin = None
        if ctx.needs_input_grad[1]:  # d y / d γ = Σ_k w_k (v_k + m) − x_aa
            grad_gamma = _scalar_grad((coef * ((weights * (values + margin)).sum(2) - d)).sum(), gamma)
        if ctx.needs_input_grad[2]:  # d y / d m = γ
            grad_margin = _scalar_grad(coef.sum() * gamma, margin)
        return grad_x, grad_gamma, grad_margin, None
