"""The shop example: three Apps that tell each other what happened (events) and a timer.

    busapp run examples/shop/orders.py --workers 2
    busapp run examples/shop/billing.py
    busapp run examples/shop/shipping.py --workers 2
    busapp call orders.place item=apple quantity=2
"""
