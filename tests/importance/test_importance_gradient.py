"""Gradient criteria (taylor, hessian) against values computed by hand."""

import torch
from torch import nn


def sum_loss(model, batch):
    return model(batch[0]).sum()


# With L = sum of the outputs, dL/d(ReLU output) = the column sums of fc2 = (3, 1, -1).
# Sample 1 (1, 2), every unit active: dW1 = (3, 6), (1, 2), (-1, -2); db1 = (3, 1, -1);
#   dW2[:, c] = relu_c = (1, 4, 2)[c] for both outputs.
# Sample 2 (3, -1), only unit 0 active: dW1[0] = (9, -3); db1[0] = 3; dW2[:, c] = (3, 0, 0)[c].


def test_taylor_averages_gradients_over_batches(mlp, scores, check):
    model, x, y = mlp()
    # one sample per batch, mean gradients; sum of w * g over each channel's slices:
    # ch0: 1*6 (W1) + 0*3 (b1) + 1*2 + 2*2 (W2) = 12
    # ch1: 2*1 + 1*2 = 4
    # ch2: -1*-0.5 + 1*-1 + 1*-0.5 + -1*1 = -2 -> |.| = 2
    data = [(x[:1], y[:1]), (x[1:], y[1:])]
    check(scores(model, x, "taylor", data=data, loss_fn=sum_loss), [12.0, 4.0, 2.0])
    # both samples in one batch: the gradients add up
    check(scores(model, x, "taylor", data=[(x, y)], loss_fn=sum_loss), [24.0, 8.0, 4.0])


def test_hessian_is_half_the_mean_squared_gradient_times_weight_squared(mlp, scores, check):
    model, x, y = mlp()
    # mean of g^2 per weight over the two single-sample batches:
    # ch0: W1 1 with g 3, 9 -> 45; W2 column (1, 2) with g 1, 3 -> 5 each: 45 + 5 + 4*5 = 70
    # ch1: W1 2 with g 2, 0 -> 2: 4*2 = 8; W2 (1, 0) with g 4, 0 -> 8: 8 + 8 = 16
    # ch2: W1 (-1, 1) with g (-1, -2), 0 -> 0.5, 2; b1 1 with g -1, 0 -> 0.5;
    #      W2 (0, -1) with g 2, 0 -> 2: 0.5 + 2 + 0.5 + 2 = 5.   Halved: 35, 8, 2.5
    data = [(x[:1], y[:1]), (x[1:], y[1:])]
    check(scores(model, x, "hessian", data=data, loss_fn=sum_loss), [35.0, 8.0, 2.5])


def test_default_loss_is_the_cross_entropy_of_the_output(mlp, scores):
    model, x, y = mlp()
    loss = nn.functional.cross_entropy(model(x), y)
    w1, b1, w2 = model[0].weight, model[0].bias, model[2].weight
    g1, gb, g2 = torch.autograd.grad(loss, [w1, b1, w2])
    taylor = (w1 * g1).sum(1) + b1 * gb + (w2 * g2).sum(0)
    hessian = 0.5 * ((w1 * g1) ** 2).sum(1) + 0.5 * (b1 * gb) ** 2 + 0.5 * ((w2 * g2) ** 2).sum(0)
    got = scores(model, x, "taylor", data=[(x, y)])
    torch.testing.assert_close(got, taylor.detach().abs().double())
    got = scores(model, x, "hessian", data=[(x, y)])
    torch.testing.assert_close(got, hessian.detach().double())


def test_forward_fn_feeds_the_default_loss(mlp, scores):
    model, x, y = mlp()
    calls = []

    def forward(m, inputs):
        calls.append(1)
        return {"logits": m(inputs)}["logits"]

    plain = scores(model, x, "taylor", data=[(x, y)])
    assert torch.equal(scores(model, x, "taylor", data=[(x, y)], forward_fn=forward), plain)
    assert calls == [1]
