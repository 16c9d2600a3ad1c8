"""Returns and exchanges the customer starts, and what happens after (issue 16).

    policy.py     what is returnable (window from delivery per category, final sale, units
                  not refunded or already in a return), fees, exchange options, auto-approval
    requests.py   open a return (the /returns/{token} page, an operator, a Shopify return,
                  a cancellation after shipping): validated, RMA, rows, timeline, auto-approve
    notices.py    the customer's mail at each step (one `return_update` template, by kind)
    decisions.py  an operator's approve / reject / keep-with-credit, a label, receipt
    receipt.py    received goods: the refund (credit note, exact points reversal) or the
                  exchange (a replacement order, tasks/replacements.py)
    overlap.py    each unit refunded once: a page return refunded here and the store's refund
                  of the same units at Shopify (which names no return) are matched
    shopify.py    Shopify's returns/* topics, through the edge's inbox
    report.py     return rate by reason and by product, refunds, exchanges (report, artifact)

Policy: configs/returns.yaml (tasks/config/returns.py). Status vocabulary:
tasks/states.ReturnStatus. Units in returns, for the stages that must not offer or ask about
goods the customer sent back: tasks/store/returns.py.
"""
