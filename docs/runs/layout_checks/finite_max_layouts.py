import torch, time, statistics as st
from ditflow_fast._problem import finite_max
H,d,T=48,64,1546
q=torch.randn(1,H,T,d); qt=torch.randn(1,T,H,d).permute(0,2,1,3)
def tm(f,r=30):
    f(); v=[]
    for _ in range(r):
        t=time.perf_counter(); f(); v.append(time.perf_counter()-t)
    return st.median(v)*1e3
print("finite_max contiguous %.2f ms, permuted view %.2f ms"%(tm(lambda: finite_max(q)), tm(lambda: finite_max(qt))))
print("aminmax contiguous %.2f, permuted %.2f, permuted.flatten-equivalent %.2f"%(tm(lambda: torch.aminmax(q)), tm(lambda: torch.aminmax(qt)), tm(lambda: torch.aminmax(qt.permute(0,2,1,3)))))
